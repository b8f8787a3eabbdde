"""The SDK's overhead: what ``@guard`` adds to a call, with a remote check and with local evaluation.

For each backend (default ``embedded``; ``--backend postgres|all``), one ``aigos serve`` process (one
worker) on 127.0.0.1:

- sign up a tenant (enterprise plan), register agents through ``AigosClient.register``;
- **bare**: a no-op function, timed call by call (the floor);
- **guarded, remote**: the same no-op under ``@guard(tool="web_search")``: kill-switch gate, one
  ``POST /v1/policies/check`` over the SDK's kept-alive ``http.client`` connection, the outcome queued for
  telemetry and carried to the server by the next check (as in production); concurrency 1;
- **guarded, remote, no telemetry**: the same with ``telemetry_enabled=False`` (what recording the
  outcome events costs the server);
- **guarded, local**: the same with ``local_evaluation=True``: decided from the signed bundle by
  ``aigos.core.policy`` in-process;
- **transport**: the same check request sent raw with ``httpx.Client`` and with the SDK's
  ``SyncTransport`` (``http.client``), side by side: why the sync client uses the latter;
- **kill switch**: trigger TERMINATE for an agent whose guarded loop runs, time until the loop stops
  (trigger call issued -> ``AgentTerminated`` raised), several trials.

Beside the server, its floor (``bench/floor.py``: a bare Starlette app on ``aigos serve``'s own launcher,
same environment, one worker) is sent the same check request with the same client right before each HTTP
case. Reported per case: p50 / p99 / p99.9 / max per call, calls per second and the server's CPU µs per
call, each beside the floor's as a ratio; the in-process cases with their overhead over bare (p50 and
p99 differences). ``--repeat N`` runs every case N times and prints each run and the worst.
Targets: guarded remote adds p99 < 1.5 ms; guarded local adds p99 < 20 us.

Run: ``.venv/bin/python bench/sdk.py [--backend embedded|postgres|all] [--calls N] [--repeat N] [--json]``.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``token``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0], where bench/token.py would shadow the standard
# library's ``token`` module. Import the bench package from the repo root instead (as bench/token.py does).
_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import json
import os
import platform
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from aigos.sdk import AgentTerminated, AigosClient, guard
from aigos.sdk.transport import SyncTransport
from bench._figures import Figures, Row, Target, format_rows, format_targets, json_default, worst
from bench._server import (
    ServerProcess,
    aigos_server,
    cpu_seconds,
    embedded_environment,
    floor_server,
    postgres_environment,
)

TARGETS = {"remote_overhead_p99_us": 1500.0, "local_overhead_p99_us": 20.0}
KILL_TRIALS = 5


def timings(call: Callable[[], object], count: int, warmup: int) -> tuple[list[int], float]:
    """Nanoseconds per call, ascending, after ``warmup`` untimed calls; and the timed calls' wall time."""
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    values: list[int] = []
    append = values.append
    started = time.perf_counter()
    for _ in range(count):
        began = clock()
        call()
        append(clock() - began)
    wall = time.perf_counter() - started
    values.sort()
    return values, wall


def timed_calls(call: Callable[[], object], count: int, warmup: int, server: ServerProcess | None) -> Figures:
    """``timings`` as ``Figures``, with ``server``'s CPU time per call when a server answers them."""
    cpu_before = cpu_seconds(server.pid) if server is not None else None
    values, wall = timings(call, count, warmup)
    server_cpu = (
        cpu_seconds(server.pid) - cpu_before if server is not None and cpu_before is not None else None
    )
    return Figures.of_latencies(values, wall, server_cpu_seconds=server_cpu)


def overhead(case: Figures, bare: Figures) -> dict[str, float]:
    """What the guard adds over the bare call, in microseconds."""
    return {
        "p50_us": round(case.p50_us - bare.p50_us, 3),
        "p99_us": round(case.p99_us - bare.p99_us, 3),
    }


def signup(base_url: str, admin_token: str) -> str:
    """A tenant on the enterprise plan; its owner's admin key."""
    response = httpx.post(
        base_url + "/v1/tenants",
        json={
            "name": "SDK bench",
            "slug": f"sdk-bench-{secrets.token_hex(4)}",
            "owner_email": "bench@example.com",
            "owner_password": "correct horse battery staple",
            "plan_tier": "enterprise",
        },
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=30,
    )
    response.raise_for_status()
    key: str = response.json()["api_key"]["key"]
    return key


def kill_latency(base_url: str, api_key: str) -> list[float]:
    """Seconds from issuing TERMINATE to the guarded loop stopping, per trial."""
    results: list[float] = []
    for trial in range(KILL_TRIALS):
        client = AigosClient(
            api_key=api_key,
            base_url=base_url,
            on_terminate="raise",
            set_default=False,
            telemetry_enabled=False,
        )
        identity = client.register(name=f"kill-{trial}", capabilities={"tools": ["web_search"]})
        listener = client.on_kill_switch(lambda command: None)
        listener.connected.wait(10)
        stopped: dict[str, float] = {}

        @guard(tool="web_search", client=client)
        def step() -> None:
            time.sleep(0.001)

        def loop(stopped: dict[str, float] = stopped) -> None:
            try:
                while True:
                    step()
            except AgentTerminated:
                stopped["at"] = time.perf_counter()

        worker = threading.Thread(target=loop, daemon=True)
        worker.start()
        time.sleep(0.2)
        issued = time.perf_counter()
        httpx.post(
            base_url + "/v1/kill-switch/trigger",
            json={"agent_id": identity.agent_id, "command": "TERMINATE", "reason": "bench"},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        ).raise_for_status()
        worker.join(10)
        results.append(stopped.get("at", float("inf")) - issued)
        client.close()
    return results


def bench_backend(
    server: ServerProcess, floor: ServerProcess, admin_token: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Every case against one server, ``--repeat`` times; each HTTP case right after the floor's."""
    base_url = server.base_url
    api_key = signup(base_url, admin_token)
    rows: list[Row] = []
    local_runs: list[dict[str, Any]] = []
    calls = args.calls

    def noop() -> None:
        return None

    with AigosClient(api_key=api_key, base_url=base_url, set_default=False) as raw:
        raw.register(name="bench-raw", capabilities={"tools": ["web_search"]})
        # The check request the guard sends, raw; the floor is sent the same body and headers.
        body = {"action": "tool.call", "resource": "web_search", "context": {"tool": "web_search"}}
        headers = {"Authorization": f"Bearer {raw.token()}"}
        floor_transport = SyncTransport(floor.base_url)
        transport = SyncTransport(base_url)

        def floor_check() -> object:
            return floor_transport.request("POST", "/v1/policies/check", json=body, headers=headers)

        for run in range(1, args.repeat + 1):
            with AigosClient(api_key=api_key, base_url=base_url, set_default=False) as remote:
                remote.register(name=f"bench-remote-{run}", capabilities={"tools": ["web_search"]})
                guarded = guard(tool="web_search", client=remote)(noop)
                floor_figures = timed_calls(floor_check, calls, 200, floor)
                figures = timed_calls(guarded, calls, 200, server)
                rows.append(Row.paired("guarded, remote", 1, run, figures, floor_figures))
            # Without outcome telemetry: isolates what the server's event-log writes cost the checks.
            with AigosClient(
                api_key=api_key, base_url=base_url, telemetry_enabled=False, set_default=False
            ) as quiet:
                quiet.register(name=f"bench-remote-quiet-{run}", capabilities={"tools": ["web_search"]})
                guarded = guard(tool="web_search", client=quiet)(noop)
                floor_figures = timed_calls(floor_check, calls, 200, floor)
                figures = timed_calls(guarded, calls, 200, server)
                rows.append(Row.paired("guarded, no telemetry", 1, run, figures, floor_figures))
            # The same check request, raw: httpx.Client against the SDK's http.client transport.
            with (
                httpx.Client(base_url=base_url, timeout=10, trust_env=False) as http,
                httpx.Client(base_url=floor.base_url, timeout=10, trust_env=False) as floor_http,
            ):
                floor_figures = timed_calls(
                    lambda: floor_http.post("/v1/policies/check", json=body, headers=headers),
                    calls,
                    200,
                    floor,
                )
                figures = timed_calls(
                    lambda: http.post("/v1/policies/check", json=body, headers=headers), calls, 200, server
                )
                rows.append(Row.paired("raw check, httpx", 1, run, figures, floor_figures))
            floor_figures = timed_calls(floor_check, calls, 200, floor)
            figures = timed_calls(
                lambda: transport.request("POST", "/v1/policies/check", json=body, headers=headers),
                calls,
                200,
                server,
            )
            rows.append(Row.paired("raw check, http.client", 1, run, figures, floor_figures))

            bare = timed_calls(noop, args.local_calls, 1000, None)
            with AigosClient(
                api_key=api_key, base_url=base_url, local_evaluation=True, set_default=False
            ) as local:
                local.register(name=f"bench-local-{run}", capabilities={"tools": ["web_search"]})
                guarded_local = timed_calls(
                    guard(tool="web_search", client=local)(noop), args.local_calls, 1000, None
                )
                decided_locally = local.check(tool="web_search").local
            local_runs.append(
                {"bare": bare, "guarded_local": guarded_local, "decided_locally": decided_locally}
            )
        transport.close()
        floor_transport.close()

    trials = kill_latency(base_url, api_key)
    return {
        "rows": rows,
        "local": local_runs,
        "kill_switch_seconds": {
            "trials": [round(t, 4) for t in trials],
            "max": round(max(trials), 4),
            "median": round(sorted(trials)[len(trials) // 2], 4),
        },
    }


def verdicts(result: dict[str, Any]) -> list[Target]:
    """The guard's overhead targets, on the worst run."""
    rows = [row for row in result["rows"] if row.label == "guarded, remote"]
    bare = max(run["bare"].p99_us for run in result["local"])
    remote = max(row.figures.p99_us for row in rows) - min(run["bare"].p99_us for run in result["local"])
    local = max(run["guarded_local"].p99_us for run in result["local"]) - bare
    return [
        Target("guarded remote call adds, p99", remote, TARGETS["remote_overhead_p99_us"], "µs", strict=True),
        Target("guarded local call adds, p99", local, TARGETS["local_overhead_p99_us"], "µs", strict=True),
    ]


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["embedded", "postgres", "all"], default="embedded")
    parser.add_argument(
        "--calls", type=int, default=10_000, help="guarded remote calls (and transport calls)"
    )
    parser.add_argument("--local-calls", type=int, default=100_000, help="bare and local-evaluation calls")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every case this many times; print each and the worst"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if min(args.calls, args.local_calls, args.repeat) < 1:
        parser.error("--calls, --local-calls and --repeat must be at least 1")
    backends = ["embedded", "postgres"] if args.backend == "all" else [args.backend]
    admin_token = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()[0]},
        "settings": {"calls": args.calls, "local_calls": args.local_calls, "repeat": args.repeat},
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="aigos-bench-sdk-") as tmp:
        for backend in backends:
            environment = embedded_environment if backend == "embedded" else postgres_environment
            with environment() as env:
                env = {
                    **env,
                    "AIGOS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
                    "AIGOS_DEFAULT_RATE_LIMIT_RPM": "10000000",
                    "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
                }
                server = aigos_server(Path(tmp) / backend, env, name=backend)
                floor = floor_server(Path(tmp) / f"{backend}-floor", env, name=f"{backend}-floor")
                with server, floor:
                    result = bench_backend(server, floor, admin_token, args)
                result["targets"] = verdicts(result)
                report["backends"][backend] = result
    report["load_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2, default=json_default))
        return
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    """Readable tables."""
    machine = report["machine"]
    print(
        f"AIGOS SDK overhead  (python {machine['python']}, {machine['cpus']} cpus, 1-min load "
        f"{machine['load']:.2f} at start, {report['load_end']:.2f} at end; one server worker, concurrency 1)"
    )
    for backend, result in report["backends"].items():
        print(f"\n[{backend}] over HTTP, each case right after the floor's with the same client")
        rows: list[Row] = []
        for label in (
            "guarded, remote",
            "guarded, no telemetry",
            "raw check, httpx",
            "raw check, http.client",
        ):
            runs = [row for row in result["rows"] if row.label == label]
            rows += runs + ([worst(runs)] if len(runs) > 1 else [])
        print("\n".join(format_rows(rows)))
        print(
            "(floor of the guarded and http.client rows: the same check request sent with the SDK's "
            "http.client transport to the floor; of the httpx row: sent with httpx)"
        )
        print(f"\n[{backend}] in process, per call")
        print(
            f"  {'case':<28}{'run':>6}{'p50 µs':>10}{'p99 µs':>10}{'p99.9 µs':>10}{'max µs':>10}"
            f"{'+p50 µs':>10}{'+p99 µs':>10}"
        )
        for number, run in enumerate(result["local"], 1):
            bare, local = run["bare"], run["guarded_local"]
            extra = overhead(local, bare)
            for name, f, add in (("bare", bare, None), ("guarded, local", local, extra)):
                plus = "" if add is None else f"{add['p50_us']:>10.2f}{add['p99_us']:>10.2f}"
                print(
                    f"  {name:<28}{number:>6}{f.p50_us:>10.2f}{f.p99_us:>10.2f}{f.p999_us:>10.2f}"
                    f"{f.max_us:>10.1f}{plus}"
                )
        print("\n".join(["", "  targets", *format_targets(result["targets"])]))
        kill = result["kill_switch_seconds"]
        print(f"  TERMINATE -> guarded loop stopped: median {kill['median']:.3f} s, max {kill['max']:.3f} s")


if __name__ == "__main__":
    main()
