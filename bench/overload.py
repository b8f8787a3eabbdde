"""Overload: load is shed, not queued. Two scenarios, each against a floor measured in the same run.

- ``slow-db``: one ``aigos serve`` worker on PostgreSQL + Redis, the PostgreSQL link 200 ms slower per round
  trip (a loopback proxy), 32 clients. Target: every request answered within its deadline (503 when shed).
- ``saturated``: ``aigos serve --workers 2`` on PostgreSQL + Redis, 64 clients. Target: the admitted
  requests' p99 <= 1 s, the excess shed.

The floor of each is the same server and request mix at 8 clients. Each client keeps one request in flight
on its own keep-alive connection, cycling through a mix over 4 tenants: register an agent (a write), read
an agent, a policy check (the hot path), read again; a client refused with 503 honours its ``Retry-After``
(1 s) before its next request. A separate connection probes ``GET /health`` (liveness) every 50 ms
meanwhile. Every phase is repeated (``--repeat``), floor and load alternating.

Printed per phase: answers (2xx, 503, other, unanswered: connection closed or no answer within 30 s),
latency of the admitted (2xx) requests p50/p99/max, the slowest answer of any kind, 2xx per second, and
``/health`` p99; and the load's admitted p99 as a ratio to its floor's.

Run: ``.venv/bin/python bench/overload.py [--scenario slow-db|saturated|all] [--seconds S] [--repeat N]
[--json]``. Needs PostgreSQL on 127.0.0.1:5432 (user ``postgres``) and Redis on 127.0.0.1:6379; a fresh
database is created and dropped, and the Redis keys deleted, each scenario.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``http``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0], where ``bench/http.py`` would shadow the standard
# library's ``http``; ``bench`` and ``tests`` are imported from the repo root instead.
_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from tests.tcp_proxy import TcpProxy

from bench._load import ProtocolError, build_request, load_runner, percentile, read_response
from bench._server import HOST, aigos_server, postgres_environment

TENANTS = 4
CAPABILITIES = {"tools": ["web_*"], "domains": ["*.example.com"]}
CHECK_BODY = b'{"action":"web_search","resource":"docs.example.com"}'
FLOOR_CLIENTS = 8
SLOW_DB_CLIENTS = 32
SATURATED_CLIENTS = 64
SLOW_DB_DELAY_SECONDS = 0.2
#: A request unanswered this long counts as unanswered (the outside run's clients gave up after 15 s).
CLIENT_TIMEOUT_SECONDS = 30.0
HEALTH_EVERY_SECONDS = 0.05
#: What a client refused with 503 waits before its next request (the ``Retry-After`` the server sends).
RETRY_AFTER_SECONDS = 1.0
HEALTH_REQUEST = build_request("GET", "/health")


@dataclass(frozen=True)
class PhaseReport:
    """One phase: ``clients`` clients for ``seconds``; latencies in milliseconds."""

    scenario: str
    phase: str
    clients: int
    seconds: float
    ok: int
    shed: int
    other: int
    unanswered: int
    admitted_p50_ms: float
    admitted_p99_ms: float
    admitted_max_ms: float
    slowest_answer_ms: float
    ok_per_second: float
    health_p99_ms: float
    health_failed: int


class ProxyThread:
    """A ``TcpProxy`` in front of PostgreSQL, run by an event loop of its own thread.

    The servers are started by blocking calls; the proxy must keep forwarding meanwhile.
    """

    def __init__(self, port: int = 5432) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = self._call(TcpProxy("127.0.0.1", port).start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def slow(self, delay: float) -> None:
        """Add ``delay`` seconds to every round trip."""
        self._loop.call_soon_threadsafe(self.proxy.slow, delay)

    def close(self) -> None:
        """Stop the proxy and its loop."""
        self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def prepare(base_url: str, admin_token: str) -> list[list[bytes]]:
    """Sign up ``TENANTS`` enterprise tenants, each with one agent; each tenant's request mix."""
    mixes: list[list[bytes]] = []
    with httpx.Client(base_url=base_url, timeout=60, trust_env=False) as client:
        for number in range(TENANTS):
            signup = client.post(
                "/v1/tenants",
                json={
                    "name": f"Load {number}",
                    "slug": f"load-{number}-{secrets.token_hex(4)}",
                    "owner_email": f"load{number}@example.com",
                    "owner_password": "correct horse battery staple",
                    "plan_tier": "enterprise",
                },
                headers={"Authorization": f"Bearer {admin_token}"},
            )
            signup.raise_for_status()
            key = {"Authorization": f"Bearer {signup.json()['api_key']['key']}"}
            agent = client.post(
                "/v1/agents/register",
                json={"name": "reader", "capabilities": CAPABILITIES},
                headers=key,
            )
            agent.raise_for_status()
            body = agent.json()
            json_key = {**key, "Content-Type": "application/json"}
            token = {"Authorization": f"Bearer {body['identity_token']}", "Content-Type": "application/json"}
            write = build_request("POST", "/v1/agents", headers=json_key, body=b'{"name":"load"}')
            read = build_request("GET", f"/v1/agents/{body['agent_id']}", headers=key)
            check = build_request("POST", "/v1/policies/check", headers=token, body=CHECK_BODY)
            mixes.append([write, read, check, read])
    return mixes


async def run_phase(
    scenario: str, phase: str, port: int, mixes: list[list[bytes]], clients: int, seconds: float
) -> PhaseReport:
    """``clients`` closed-loop clients for ``seconds``, and the ``/health`` probe alongside."""
    statuses: Counter[str] = Counter()
    admitted: list[int] = []
    slowest = 0
    stop_at = time.perf_counter() + seconds

    async def client(number: int) -> None:
        nonlocal slowest
        mix = mixes[number % len(mixes)]
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            turn = number
            while time.perf_counter() < stop_at:
                request = mix[turn % len(mix)]
                turn += 1
                start = time.perf_counter_ns()
                writer.write(request)
                try:
                    status = await asyncio.wait_for(read_response(reader), CLIENT_TIMEOUT_SECONDS)
                except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ProtocolError):
                    statuses["unanswered"] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    continue
                took = time.perf_counter_ns() - start
                slowest = max(slowest, took)
                if 200 <= status < 300:
                    statuses["ok"] += 1
                    admitted.append(took)
                elif status == 503:
                    statuses["shed"] += 1
                    # A well-behaved client: every 503 here says Retry-After: 1.
                    await asyncio.sleep(RETRY_AFTER_SECONDS)
                else:
                    statuses["other"] += 1
        finally:
            writer.close()

    health: list[int] = []
    health_failed = 0

    async def probe() -> None:
        nonlocal health_failed
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.perf_counter() < stop_at:
                start = time.perf_counter_ns()
                writer.write(HEALTH_REQUEST)
                try:
                    status = await asyncio.wait_for(read_response(reader), CLIENT_TIMEOUT_SECONDS)
                except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ProtocolError):
                    health_failed += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    continue
                health.append(time.perf_counter_ns() - start)
                if status != 200:
                    health_failed += 1
                await asyncio.sleep(HEALTH_EVERY_SECONDS)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(probe(), *(client(number) for number in range(clients)))
    wall = time.perf_counter() - began
    admitted.sort()
    health.sort()

    def ms(value: int) -> float:
        return round(value / 1e6, 1)

    return PhaseReport(
        scenario=scenario,
        phase=phase,
        clients=clients,
        seconds=round(wall, 1),
        ok=statuses["ok"],
        shed=statuses["shed"],
        other=statuses["other"],
        unanswered=statuses["unanswered"],
        admitted_p50_ms=ms(percentile(admitted, 0.5)) if admitted else 0.0,
        admitted_p99_ms=ms(percentile(admitted, 0.99)) if admitted else 0.0,
        admitted_max_ms=ms(admitted[-1]) if admitted else 0.0,
        slowest_answer_ms=ms(slowest),
        ok_per_second=round(statuses["ok"] / wall, 1),
        health_p99_ms=ms(percentile(health, 0.99)) if health else 0.0,
        health_failed=health_failed,
    )


@contextmanager
def scenario_server(
    scenario: str, workdir: Path, admin_token: str
) -> Iterator[tuple[int, ProxyThread | None]]:
    """The scenario's server, started (PostgreSQL through a proxy for ``slow-db``); its port and proxy."""
    proxy = ProxyThread() if scenario == "slow-db" else None
    try:
        with postgres_environment() as env:
            env = {
                **env,
                "AIGOS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
                "AIGOS_DEFAULT_RATE_LIMIT_RPM": "1000000",
                "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
            }
            if proxy is not None:
                env["AIGOS_DATABASE_URL"] = env["AIGOS_DATABASE_URL"].replace(
                    "127.0.0.1:5432", f"127.0.0.1:{proxy.proxy.port}"
                )
            workers = 2 if scenario == "saturated" else 1
            with aigos_server(workdir, env, name=scenario, workers=workers) as server:
                yield server.port, proxy
    finally:
        if proxy is not None:
            proxy.close()


def bench_scenario(scenario: str, seconds: float, repeat: int) -> list[PhaseReport]:
    """Floor and load phases of ``scenario``, ``repeat`` times each, alternating."""
    admin_token = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    clients = SLOW_DB_CLIENTS if scenario == "slow-db" else SATURATED_CLIENTS
    reports: list[PhaseReport] = []
    with (
        tempfile.TemporaryDirectory(prefix="aigos-overload-") as workdir,
        scenario_server(scenario, Path(workdir), admin_token) as (port, proxy),
        load_runner() as runner,
    ):
        mixes = prepare(f"http://{HOST}:{port}", admin_token)
        if proxy is not None:
            proxy.slow(SLOW_DB_DELAY_SECONDS)
        for _ in range(repeat):
            for phase, count in (("floor", FLOOR_CLIENTS), ("load", clients)):
                report = runner.run(run_phase(scenario, phase, port, mixes, count, seconds))
                reports.append(report)
                print_report(report)
    return reports


def print_report(report: PhaseReport) -> None:
    """One line per phase."""
    print(
        f"{report.scenario:>9} {report.phase:>5} c={report.clients:<3} {report.seconds:>5.1f}s  "
        f"2xx={report.ok:<6} 503={report.shed:<6} other={report.other:<4} unanswered={report.unanswered:<4} "
        f"admitted p50/p99/max={report.admitted_p50_ms:.0f}/{report.admitted_p99_ms:.0f}/"
        f"{report.admitted_max_ms:.0f} ms  slowest={report.slowest_answer_ms:.0f} ms  "
        f"2xx/s={report.ok_per_second:.0f}  /health p99={report.health_p99_ms:.1f} ms "
        f"(failed {report.health_failed})",
        flush=True,
    )


def summary(reports: list[PhaseReport]) -> dict[str, Any]:
    """Per scenario: the worst load phase against the best floor, and the targets' verdicts."""
    out: dict[str, Any] = {}
    for scenario in sorted({report.scenario for report in reports}):
        floor = [r for r in reports if r.scenario == scenario and r.phase == "floor"]
        load = [r for r in reports if r.scenario == scenario and r.phase == "load"]
        floor_p99 = min(r.admitted_p99_ms for r in floor)
        worst = max(load, key=lambda r: r.admitted_p99_ms)
        out[scenario] = {
            "floor_admitted_p99_ms": floor_p99,
            "load_admitted_p99_ms": worst.admitted_p99_ms,
            "ratio_to_floor": round(worst.admitted_p99_ms / floor_p99, 2) if floor_p99 else None,
            "load_slowest_answer_ms": max(r.slowest_answer_ms for r in load),
            "load_shed": sum(r.shed for r in load),
            "load_other": sum(r.other for r in load),
            "load_unanswered": sum(r.unanswered for r in load),
            "health_p99_ms": max(r.health_p99_ms for r in load),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios and print the phases and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=["slow-db", "saturated", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each phase.")
    parser.add_argument("--repeat", type=int, default=3, help="Floor and load phases per scenario.")
    parser.add_argument("--json", action="store_true", help="Also print one JSON object at the end.")
    args = parser.parse_args(argv)
    scenarios = ["slow-db", "saturated"] if args.scenario == "all" else [args.scenario]
    print(f"overload bench on {os.cpu_count()} CPUs; phases of {args.seconds:g} s, {args.repeat} rounds")
    reports: list[PhaseReport] = []
    for scenario in scenarios:
        reports += bench_scenario(scenario, args.seconds, args.repeat)
    result = summary(reports)
    for scenario, figures in result.items():
        print(f"{scenario}: " + ", ".join(f"{name}={value}" for name, value in figures.items()))
    if args.json:
        print(json.dumps({"phases": [asdict(r) for r in reports], "summary": result}))
    return 0


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        sys.exit(main())
