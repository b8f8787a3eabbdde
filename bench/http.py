"""HTTP baseline: round trip of ``GET /health`` on AIGOS against a bare FastAPI app, same machine, same run.

Every later benchmark (policy check, token issuance, ...) is read against these numbers: they are the
floor of one request through uvicorn, FastAPI and AIGOS's middleware, with no database work.

For each server -- the bare ``baseline`` app, then AIGOS ``embedded`` (SQLite + in-process bus) and/or
``postgres`` (PostgreSQL + Redis) -- one at a time, one worker, on 127.0.0.1:

- start it, make a few requests, let it settle, read its resident memory (idle RSS);
- at each concurrency (default 1 and 32): open one keep-alive connection per concurrent client, warm up,
  then time a fixed number of requests (p50 / p99 / max round trip, requests per second), sampling the
  server's RSS for the peak under load and its CPU time;
- stop it with SIGTERM.

Run: ``.venv/bin/python bench/http.py [--backend embedded|postgres|all] [--requests N] [--json]``.
The ``postgres`` backend needs PostgreSQL on 127.0.0.1:5432 (user ``postgres``) and Redis on
127.0.0.1:6379; a fresh database is created and dropped, and the Redis keys deleted, every run.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``http``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0], where this ``http.py`` would shadow the standard
# library's ``http`` package for every module imported below. Import the bench package from the repo root.
_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import json
import os
import platform
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from bench._load import HttpLoadClient, LoadRunner, load_runner
from bench._server import (
    HOST,
    RssSampler,
    ServerProcess,
    aigos_server,
    baseline_server,
    cpu_seconds,
    embedded_environment,
    postgres_environment,
    rss_bytes,
)

HEALTH_REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
CONCURRENCY = (1, 32)
DEFAULT_REQUESTS = {1: 5_000}  # any other concurrency: DEFAULT_REQUESTS_LOADED
DEFAULT_REQUESTS_LOADED = 20_000
WARMUP_REQUESTS = 200
IDLE_WARMUP_REQUESTS = 3  # before reading the idle RSS
IDLE_SETTLE_SECONDS = 1.0
IDLE_RSS_TARGET_MB = 150.0
BACKENDS = ("embedded", "postgres")
MB = 1024 * 1024


@dataclass(frozen=True)
class ScenarioReport:
    """One server at one concurrency: latency in microseconds, throughput, CPU shares, peak memory."""

    concurrency: int
    requests: int
    errors: int
    p50_us: float
    p99_us: float
    max_us: float
    requests_per_second: float
    wall_seconds: float
    server_cpu_share: float
    client_cpu_share: float
    rss_peak_mb: float


@dataclass
class ServerReport:
    """Everything measured on one server process."""

    name: str
    rss_idle_mb: float = 0.0
    scenarios: list[ScenarioReport] = field(default_factory=list)
    exit_code: int | None = None
    stopped_cleanly: bool = False

    @property
    def rss_load_peak_mb(self) -> float:
        """Largest RSS sampled during any measured run (in practice the highest concurrency)."""
        return max((s.rss_peak_mb for s in self.scenarios), default=0.0)

    def at(self, concurrency: int) -> ScenarioReport:
        """The scenario run at ``concurrency``."""
        return next(s for s in self.scenarios if s.concurrency == concurrency)


def requests_for(concurrency: int, override: int | None) -> int:
    """Requests to time at ``concurrency``: ``--requests`` when given, else the default for it."""
    if override is not None:
        return override
    return DEFAULT_REQUESTS.get(concurrency, DEFAULT_REQUESTS_LOADED)


async def make_requests(server: ServerProcess, requests: int) -> None:
    """Make ``requests`` untimed requests on one connection."""
    async with HttpLoadClient(HOST, server.port, HEALTH_REQUEST, concurrency=1) as client:
        await client.run(requests)


async def run_scenario(server: ServerProcess, concurrency: int, requests: int, warmup: int) -> ScenarioReport:
    """Warm up, then time ``requests`` requests at ``concurrency`` while sampling the server's RSS and CPU."""
    async with HttpLoadClient(HOST, server.port, HEALTH_REQUEST, concurrency=concurrency) as client:
        await client.run(max(warmup, concurrency))
        cpu_before = cpu_seconds(server.pid)
        async with RssSampler(server.pid) as rss:
            result = await client.run(requests)
        server_cpu = cpu_seconds(server.pid) - cpu_before
    return ScenarioReport(
        concurrency=concurrency,
        requests=result.requests,
        errors=result.errors,
        p50_us=result.p50_ns / 1000,
        p99_us=result.p99_ns / 1000,
        max_us=result.max_ns / 1000,
        requests_per_second=result.requests_per_second,
        wall_seconds=result.wall_seconds,
        server_cpu_share=server_cpu / result.wall_seconds,
        client_cpu_share=result.client_cpu_share,
        rss_peak_mb=rss.peak_bytes / MB,
    )


def bench_server(
    server: ServerProcess, runner: LoadRunner, concurrencies: list[int], override: int | None, warmup: int
) -> ServerReport:
    """Start ``server``, read its idle RSS, run every concurrency, stop it with SIGTERM."""
    report = ServerReport(name=server.name)
    with server:
        runner.run(make_requests(server, IDLE_WARMUP_REQUESTS))
        time.sleep(IDLE_SETTLE_SECONDS)
        report.rss_idle_mb = rss_bytes(server.pid) / MB
        for concurrency in concurrencies:
            requests = requests_for(concurrency, override)
            report.scenarios.append(runner.run(run_scenario(server, concurrency, requests, warmup)))
    report.exit_code = server.exit_code
    report.stopped_cleanly = server.stopped_cleanly
    return report


def run_all(
    backends: list[str], concurrencies: list[int], override: int | None, warmup: int
) -> dict[str, Any]:
    """Measure the baseline and each backend, one server at a time, and return the whole report."""
    reports: list[ServerReport] = []
    date = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with load_runner() as runner, tempfile.TemporaryDirectory(prefix="aigos-bench-http-") as tmp:
        workdir = Path(tmp)
        reports.append(
            bench_server(baseline_server(workdir / "baseline"), runner, concurrencies, override, warmup)
        )
        for backend in backends:
            environment = embedded_environment if backend == "embedded" else postgres_environment
            with environment() as env:
                server = aigos_server(workdir / backend, env, name=backend)
                reports.append(bench_server(server, runner, concurrencies, override, warmup))
        loop_name = runner.loop_name
    baseline, aigos = reports[0], reports[1:]
    return {
        "benchmark": "http",
        "what": "round trip of GET /health, one HTTP/1.1 keep-alive connection per concurrent client",
        "date": date,
        "machine": machine_info(),
        "note": "numbers are from one run on this machine",
        "elapsed_seconds": round(time.monotonic() - started, 1),
        # Other work on the machine (a test run, a build) shows here first; numbers then read slow.
        "load_average_1m": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "settings": {
            "concurrency": concurrencies,
            "requests": {str(c): requests_for(c, override) for c in concurrencies},
            "warmup_requests": warmup,
            "server_workers": 1,
            "client_event_loop": loop_name,
        },
        "idle_rss_target_mb": IDLE_RSS_TARGET_MB,
        "servers": [server_json(report) for report in reports],
        "ratios_vs_baseline": {
            report.name: [ratios(report.at(c), baseline.at(c)) for c in concurrencies] for report in aigos
        },
    }


def machine_info() -> dict[str, Any]:
    """CPU count, Python and OS of this machine."""
    return {
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def server_json(report: ServerReport) -> dict[str, Any]:
    """One server's report as JSON-ready data (figures rounded)."""
    return {
        "name": report.name,
        "rss_idle_mb": round(report.rss_idle_mb, 1),
        "rss_load_peak_mb": round(report.rss_load_peak_mb, 1),
        "exit_code": report.exit_code,
        "stopped_cleanly": report.stopped_cleanly,
        "scenarios": [
            {key: round(value, 3) if isinstance(value, float) else value for key, value in asdict(s).items()}
            for s in report.scenarios
        ],
    }


def ratios(measured: ScenarioReport, baseline: ScenarioReport) -> dict[str, float | int]:
    """AIGOS over baseline: latency ratios above 1 and a req/s ratio below 1 mean AIGOS is slower."""
    return {
        "concurrency": measured.concurrency,
        "p50": round(measured.p50_us / baseline.p50_us, 2),
        "p99": round(measured.p99_us / baseline.p99_us, 2),
        "requests_per_second": round(measured.requests_per_second / baseline.requests_per_second, 2),
    }


def format_table(data: dict[str, Any]) -> str:
    """The report as plain text."""
    machine, settings, load = data["machine"], data["settings"], data["load_average_1m"]
    counts = ", ".join(f"{n} at c={c}" for c, n in settings["requests"].items())
    lines = [
        f"AIGOS HTTP baseline: {data['what']}",
        f"machine: {machine['cpus']} CPUs, {machine['python']}, {machine['platform']}; date: {data['date']}",
        f"note: {data['note']} (1-min load average {load['start']:.2f} at start, {load['end']:.2f} at end)",
        f"setup: one server at a time, 1 worker; {settings['client_event_loop']} client; requests {counts} "
        f"after {settings['warmup_requests']} warm-up; run {data['elapsed_seconds']:.0f} s",
        "",
        f"{'server':<9} {'conc':>4} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'req/s':>8} {'srv cpu':>7} {'cli cpu':>7}",
    ]
    for server in data["servers"]:
        for s in server["scenarios"]:
            lines.append(
                f"{server['name']:<9} {s['concurrency']:>4} {s['requests']:>8} {s['p50_us'] / 1000:>8.3f} "
                f"{s['p99_us'] / 1000:>8.3f} {s['max_us'] / 1000:>8.3f} {s['requests_per_second']:>8.0f} "
                f"{s['server_cpu_share']:>7.0%} {s['client_cpu_share']:>7.0%}"
            )
    lines += [
        "(cpu: CPU time over wall time, 100% = one core busy; srv = server process, cli = load client)",
        "",
        "AIGOS / baseline (p50, p99: above 1 = slower; req/s: below 1 = slower)",
        f"{'backend':<9} {'conc':>4} {'p50 x':>7} {'p99 x':>7} {'req/s x':>8}",
    ]
    for name, rows in data["ratios_vs_baseline"].items():
        for r in rows:
            lines.append(
                f"{name:<9} {r['concurrency']:>4} {r['p50']:>7.2f} {r['p99']:>7.2f} "
                f"{r['requests_per_second']:>8.2f}"
            )
    target = data["idle_rss_target_mb"]
    lines += ["", f"{'RSS MB':<9} {'idle':>7} {'load peak':>10}   idle target"]
    for server in data["servers"]:
        verdict = "-"
        if server["name"] != "baseline":
            met = "met" if server["rss_idle_mb"] < target else "NOT MET"
            verdict = f"< {target:.0f} MB: {met}"
        idle, peak = server["rss_idle_mb"], server["rss_load_peak_mb"]
        lines.append(f"{server['name']:<9} {idle:>7.1f} {peak:>10.1f}   {verdict}")
    problems = [
        f"{server['name']}: {s['errors']} non-200 responses at c={s['concurrency']}"
        for server in data["servers"]
        for s in server["scenarios"]
        if s["errors"]
    ]
    problems += [
        f"{server['name']}: exit code {server['exit_code']} after SIGTERM"
        for server in data["servers"]
        if not server["stopped_cleanly"]
    ]
    lines += [f"WARNING: {problem}" for problem in problems]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "all"],
        default="all",
        help="AIGOS backend(s) to measure (default: all).",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help=f"Requests timed per scenario (default: {DEFAULT_REQUESTS[1]} at c=1, "
        f"{DEFAULT_REQUESTS_LOADED} otherwise).",
    )
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=list(CONCURRENCY),
        help="Comma-separated concurrency levels (default: 1,32).",
    )
    parser.add_argument(
        "--warmup", type=int, default=WARMUP_REQUESTS, help="Untimed requests before each scenario."
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of tables.")
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if any(c < 1 or c > 1024 for c in args.concurrency):
        parser.error("--concurrency levels must be between 1 and 1024")
    args.concurrency = sorted(set(args.concurrency))
    return args


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; returns the exit status."""
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers are killed and the database and Redis keys cleaned up.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    data = run_all(backends, args.concurrency, args.requests, args.warmup)
    print(json.dumps(data, indent=2) if args.json else format_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
