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

Reported per case: p50 / p99 / max per call and the overhead over bare (p50 and p99 differences).
Targets: guarded remote adds p99 < 1.5 ms; guarded local adds p99 < 20 us.

Run: ``.venv/bin/python bench/sdk.py [--backend embedded|postgres|all] [--calls N] [--json]``.
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
from bench._load import percentile
from bench._server import aigos_server, embedded_environment, postgres_environment

TARGETS = {"remote_overhead_p99_us": 1500.0, "local_overhead_p99_us": 20.0}
KILL_TRIALS = 5


def timings(call: Callable[[], object], count: int, warmup: int) -> list[int]:
    """Nanoseconds per call, ascending, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    values: list[int] = []
    append = values.append
    for _ in range(count):
        started = clock()
        call()
        append(clock() - started)
    values.sort()
    return values


def summary(values: list[int]) -> dict[str, float]:
    """p50 / p99 / max in microseconds."""
    return {
        "p50_us": percentile(values, 0.50) / 1000,
        "p99_us": percentile(values, 0.99) / 1000,
        "max_us": values[-1] / 1000,
        "calls": len(values),
    }


def overhead(case: dict[str, float], bare: dict[str, float]) -> dict[str, float]:
    """What the guard adds over the bare call."""
    return {
        "p50_us": round(case["p50_us"] - bare["p50_us"], 3),
        "p99_us": round(case["p99_us"] - bare["p99_us"], 3),
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


def bench_backend(base_url: str, admin_token: str, calls: int, local_calls: int) -> dict[str, Any]:
    """Every case against one server."""
    api_key = signup(base_url, admin_token)
    report: dict[str, Any] = {}

    def noop() -> None:
        return None

    bare = summary(timings(noop, local_calls, 1000))
    report["bare"] = bare

    with AigosClient(api_key=api_key, base_url=base_url, set_default=False) as remote:
        remote.register(name="bench-remote", capabilities={"tools": ["web_search"]})
        guarded_remote = guard(tool="web_search", client=remote)(noop)
        case = summary(timings(guarded_remote, calls, 200))
        report["guarded_remote"] = {**case, "overhead": overhead(case, bare)}

    # The same without outcome telemetry: isolates what the server's event-log writes cost the checks.
    with AigosClient(api_key=api_key, base_url=base_url, telemetry_enabled=False, set_default=False) as quiet:
        quiet.register(name="bench-remote-quiet", capabilities={"tools": ["web_search"]})
        case = summary(timings(guard(tool="web_search", client=quiet)(noop), calls, 200))
        report["guarded_remote_no_telemetry"] = {**case, "overhead": overhead(case, bare)}

    with AigosClient(api_key=api_key, base_url=base_url, set_default=False) as remote:
        remote.register(name="bench-raw", capabilities={"tools": ["web_search"]})
        # The same check request, raw: httpx.Client against the SDK's http.client transport.
        body = {"action": "tool.call", "resource": "web_search", "context": {"tool": "web_search"}}
        headers = {"Authorization": f"Bearer {remote.token()}"}
        with httpx.Client(base_url=base_url, timeout=10, trust_env=False) as http:
            report["transport_httpx"] = summary(
                timings(lambda: http.post("/v1/policies/check", json=body, headers=headers), calls, 200)
            )
        transport = SyncTransport(base_url)
        report["transport_http_client"] = summary(
            timings(
                lambda: transport.request("POST", "/v1/policies/check", json=body, headers=headers),
                calls,
                200,
            )
        )
        transport.close()

    with AigosClient(api_key=api_key, base_url=base_url, local_evaluation=True, set_default=False) as local:
        local.register(name="bench-local", capabilities={"tools": ["web_search"]})
        guarded_local = guard(tool="web_search", client=local)(noop)
        case = summary(timings(guarded_local, local_calls, 1000))
        report["guarded_local"] = {**case, "overhead": overhead(case, bare)}
        decision = local.check(tool="web_search")
        report["guarded_local"]["decided_locally"] = decision.local

    trials = kill_latency(base_url, api_key)
    report["kill_switch_seconds"] = {
        "trials": [round(t, 4) for t in trials],
        "max": round(max(trials), 4),
        "median": round(sorted(trials)[len(trials) // 2], 4),
    }
    return report


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["embedded", "postgres", "all"], default="embedded")
    parser.add_argument(
        "--calls", type=int, default=10_000, help="guarded remote calls (and transport calls)"
    )
    parser.add_argument("--local-calls", type=int, default=100_000, help="bare and local-evaluation calls")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    backends = ["embedded", "postgres"] if args.backend == "all" else [args.backend]
    admin_token = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()[0]},
        "targets": TARGETS,
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
                workdir = Path(tmp) / backend
                workdir.mkdir()
                with aigos_server(workdir, env, name=backend) as server:
                    report["backends"][backend] = bench_backend(
                        server.base_url, admin_token, args.calls, args.local_calls
                    )
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_report(report)


def print_report(report: dict[str, Any]) -> None:
    """A readable table."""
    machine = report["machine"]
    print(
        f"AIGOS SDK overhead  (python {machine['python']}, {machine['cpus']} cpus, "
        f"load {machine['load']:.2f})"
    )
    for backend, result in report["backends"].items():
        print(f"\n[{backend}]")
        print(f"  {'case':<34}{'p50 us':>10}{'p99 us':>10}{'max us':>10}{'+p50 us':>10}{'+p99 us':>10}")
        cases = (
            "bare",
            "guarded_remote",
            "guarded_remote_no_telemetry",
            "guarded_local",
            "transport_httpx",
            "transport_http_client",
        )
        for name in cases:
            row = result[name]
            extra = row.get("overhead", {})
            print(
                f"  {name:<34}{row['p50_us']:>10.2f}{row['p99_us']:>10.2f}{row['max_us']:>10.1f}"
                f"{extra.get('p50_us', float('nan')):>10.2f}{extra.get('p99_us', float('nan')):>10.2f}"
            )
        remote = result["guarded_remote"]["overhead"]["p99_us"]
        local = result["guarded_local"]["overhead"]["p99_us"]
        targets = report["targets"]
        print(
            f"  remote overhead p99 {remote:.1f} us (target < {targets['remote_overhead_p99_us']:.0f}: "
            f"{'met' if remote < targets['remote_overhead_p99_us'] else 'MISSED'}); "
            f"local overhead p99 {local:.2f} us (target < {targets['local_overhead_p99_us']:.0f}: "
            f"{'met' if local < targets['local_overhead_p99_us'] else 'MISSED'})"
        )
        kill = result["kill_switch_seconds"]
        print(f"  TERMINATE -> guarded loop stopped: median {kill['median']:.3f} s, max {kill['max']:.3f} s")


if __name__ == "__main__":
    main()
