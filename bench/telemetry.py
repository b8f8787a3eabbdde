"""Telemetry in and metrics out: agent events ingested over HTTP, and what a ``/metrics`` scrape costs.

One server on PostgreSQL + Redis with two workers, and its floor (``bench/floor.py``) beside it:

- sign up a tenant, register ``--agents`` agents (default 10,000: a scrape must not grow with them);
- ``POST /v1/telemetry`` with batches of 100 ``tool.called`` events at each concurrency (default 8 and 32),
  right after the floor's run of the same request bytes: requests and events accepted per second; then
  the time until the event log has appended them all (``aigos_eventlog_appended_total`` and the queue
  depth on ``/metrics``): events appended per second from the first request to the last append;
- ``GET /metrics`` ``--scrapes`` times, one at a time: p50 / p99 / max, and the exposition's size.

What metrics and traces cost the policy check (metrics on vs off, and traces exported at a 10 % sample,
each timed right after the check as it ships) is ``bench/policy.py --metrics-off --otel``.

Targets (#16): at least 10,000 events/s ingested over HTTP on PostgreSQL (accepted and appended);
a scrape under 50 ms with 10,000 agents.

Run: ``.venv/bin/python bench/telemetry.py [--agents N] [--requests N] [--scrapes N] [--json]``.
Needs PostgreSQL on 127.0.0.1:5432 (user ``postgres``) and Redis on 127.0.0.1:6379.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``http``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0], where ``http.py`` and ``token.py`` would shadow
# the standard library's modules: import the bench package from the repo root instead.
_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

import httpx
import orjson

from bench._figures import Row, Target, format_rows, format_targets, timed_pair
from bench._load import build_request, load_runner
from bench._server import ServerProcess, aigos_server, floor_server, postgres_environment
from bench.killswitch import register_agents
from bench.sdk import signup

BATCH = 100
CONCURRENCY = (8, 32)
DEFAULT_AGENTS = 10_000
DEFAULT_REQUESTS = 2_000
DEFAULT_SCRAPES = 200
WORKERS = 2
TARGETS = {"events_per_second": 10_000.0, "scrape_p99_ms": 50.0}


@dataclass
class Report:
    """What one run measured."""

    agents: int
    rows: list[Row] = field(default_factory=list)
    #: Per concurrency: events accepted per second (the timed phase), appended per second (until drained).
    ingested: dict[int, dict[str, float]] = field(default_factory=dict)
    scrape_ms: dict[str, float] = field(default_factory=dict)
    scrape_bytes: int = 0


def samples(text: str) -> dict[str, float]:
    """A Prometheus exposition's samples, by name with labels."""
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    }


def appended_and_depth(http: httpx.Client) -> tuple[float, float]:
    """The event log's appended total and queue depth, over every worker."""
    found = samples(http.get("/metrics").text)
    return found.get("aigos_eventlog_appended_total", 0.0), found.get("aigos_eventlog_queue_depth", 0.0)


def telemetry_request(token: str) -> bytes:
    """One batch of ``BATCH`` agent-reported events, as raw request bytes."""
    events = [
        {"event_type": "tool.called", "data": {"tool": "search", "n": n, "ok": True}} for n in range(BATCH)
    ]
    body = orjson.dumps({"events": events})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return build_request("POST", "/v1/telemetry", headers=headers, body=body)


def run(args: argparse.Namespace) -> Report:
    """Start the servers, set up, measure."""
    report = Report(agents=args.agents)
    admin_token = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="aigos-bench-telemetry-") as tmp, postgres_environment() as env:
        env = {
            **env,
            "AIGOS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
            "AIGOS_DEFAULT_RATE_LIMIT_RPM": "10000000",
            "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
            "AIGOS_ISSUER": "https://aigos.bench.example",
        }
        server = aigos_server(Path(tmp) / "aigos", env, name="pg-2w", workers=WORKERS)
        floor = floor_server(Path(tmp) / "floor", env, name="floor-2w", workers=WORKERS)
        with server, floor, httpx.Client(base_url=server.base_url, timeout=120, trust_env=False) as http:
            api_key = signup(server.base_url, admin_token)
            agents = asyncio.run(register_agents(server.base_url, api_key, args.agents))
            request = telemetry_request(agents[0]["identity_token"])
            with load_runner() as runner:
                for concurrency in CONCURRENCY:
                    before, _ = appended_and_depth(http)
                    started = time.perf_counter()
                    figures, floor_figures = runner.run(
                        timed_pair(
                            server,
                            floor,
                            request,
                            concurrency=concurrency,
                            count=args.requests,
                            warmup=concurrency,
                            expect_status=202,
                        )
                    )
                    report.rows.append(Row.paired("telemetry", concurrency, 1, figures, floor_figures))
                    report.ingested[concurrency] = drained(http, before, started, figures.per_second)
            report.scrape_ms, report.scrape_bytes = scrapes(server, args.scrapes)
    return report


def drained(http: httpx.Client, before: float, started: float, per_second: float) -> dict[str, float]:
    """Wait until the event log has appended everything queued; events accepted and appended per second.

    ``started`` precedes the floor's run too, so the appended rate understates a little: a lower bound.
    """
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        appended, depth = appended_and_depth(http)
        if depth == 0:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    return {
        "accepted_per_second": round(per_second * BATCH),
        "appended": appended - before,
        "appended_per_second": round((appended - before) / seconds),
    }


def scrapes(server: ServerProcess, count: int) -> tuple[dict[str, float], int]:
    """``count`` scrapes one at a time: p50 / p99 / max in ms, and the exposition's size in bytes."""
    times: list[float] = []
    size = 0
    with httpx.Client(base_url=server.base_url, timeout=30, trust_env=False) as http:
        for _ in range(count):
            started = time.perf_counter()
            response = http.get("/metrics")
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            size = len(response.content)
    times.sort()
    return {
        "p50": round(statistics.median(times), 2),
        "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
        "max": round(times[-1], 2),
    }, size


def verdicts(report: Report) -> list[Target]:
    """The targets, against what was measured."""
    out = []
    for concurrency, ingested in report.ingested.items():
        for kind in ("accepted", "appended"):
            out.append(
                Target(
                    f"events {kind}/s at c={concurrency}, batches of {BATCH}",
                    ingested[f"{kind}_per_second"],
                    TARGETS["events_per_second"],
                    "/s",
                    below=False,
                )
            )
    out.append(
        Target(
            f"/metrics scrape p99, {report.agents:,} agents, {WORKERS} workers",
            report.scrape_ms["p99"],
            TARGETS["scrape_p99_ms"],
            "ms",
            strict=True,
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=DEFAULT_AGENTS, help="Agents registered (10,000).")
    parser.add_argument(
        "--requests", type=int, default=DEFAULT_REQUESTS, help=f"Batches of {BATCH} per concurrency."
    )
    parser.add_argument("--scrapes", type=int, default=DEFAULT_SCRAPES, help="Scrapes timed.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of tables.")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    report = run(args)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
        return
    print("AIGOS telemetry benchmark: POST /v1/telemetry (batches of 100) and GET /metrics")
    print(
        f"machine: {os.cpu_count()} CPUs, CPython {platform.python_version()}; 1-min load {load:.2f} at start"
    )
    print(f"PostgreSQL + Redis, {WORKERS} workers, {report.agents:,} agents\n")
    print("\n".join(format_rows(report.rows)))
    print("(per s: requests of 100 events each; x = AIGOS / floor of the same run)\n")
    for concurrency, ingested in report.ingested.items():
        print(
            f"c={concurrency}: {ingested['accepted_per_second']:,} events/s accepted, "
            f"{ingested['appended_per_second']:,} events/s appended ({ingested['appended']:,.0f} events, "
            "from the first request to the last append)"
        )
    scrape = report.scrape_ms
    print(
        f"/metrics: p50 {scrape['p50']} ms, p99 {scrape['p99']} ms, max {scrape['max']} ms, "
        f"{report.scrape_bytes:,} bytes\n"
    )
    print("targets")
    print("\n".join(format_targets(verdicts(report))))


if __name__ == "__main__":
    main()
