"""Token issuance and agent registration: latency and throughput on both backends, against bcrypt.

For each backend -- ``embedded`` (SQLite + in-process bus) and ``postgres`` (PostgreSQL + Redis), one
worker, then ``pg-2w`` (PostgreSQL + Redis, two workers, tokens at c=32 only) -- one server at a time on
127.0.0.1, with its floor beside it (``bench/floor.py``: a bare Starlette app on ``aigos serve``'s own
launcher, same environment and worker count):

- start both, sign up a tenant (enterprise plan, through the platform-admin token), register one agent
  over HTTP and keep its client secret;
- ``POST /oauth2/token`` (``client_credentials``, ``client_secret_basic``, one prebuilt form request) at
  each concurrency (default 1 and 32): warm up, then time a fixed number of requests;
- ``POST /v1/agents/register`` at concurrency 1: every request creates an agent with a client secret and
  signs its first token;
- each timed phase right after the floor's (same request bytes, client and concurrency), ``--repeat``
  times: p50 / p99 / p99.9 / max, per second and server CPU µs per token / per registration, each beside
  the floor's as a ratio; with several runs, each run and the worst;
- stop them with SIGTERM.

The reference it beats, measured in the same run: checking a client secret stored as bcrypt (cost 10),
the usual choice for passwords, against AIGOS's HMAC-SHA256 of a 256-bit secret
(``aigos.core.secrets.matches``), per check, p50 and the ratio. ``bcrypt`` is a benchmark-only dependency
(``.venv/bin/uv pip install bcrypt``); without it that part is reported as unavailable.

Targets (PostgreSQL): registration p99 at c=1 < 20 ms and token p99 at c=1 < 10 ms (one worker); at
least 1,000 tokens/s at c=32 with two workers.

Run: ``.venv/bin/python bench/token.py [--backend embedded|postgres|all] [--requests N] [--repeat N]
[--json]``.
The ``postgres`` backend needs PostgreSQL on 127.0.0.1:5432 (user ``postgres``) and Redis on
127.0.0.1:6379; a fresh database is created and dropped, and the Redis keys deleted, every run.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``token``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0], where this ``token.py`` would shadow the standard
# library's ``token`` module (imported by ``tokenize``, ``inspect``, ...). Import the bench package from
# the repo root instead.
_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import base64
import json
import os
import platform
import secrets
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import httpx

from bench._figures import Row, Target, format_rows, format_targets, json_default, timed_pair, worst
from bench._load import LoadRunner, build_request, load_runner, percentile
from bench._server import (
    ServerProcess,
    aigos_server,
    embedded_environment,
    floor_server,
    postgres_environment,
)

CONCURRENCY = (1, 32)
DEFAULT_TOKEN_REQUESTS = {1: 3_000}  # any other concurrency: DEFAULT_TOKEN_REQUESTS_LOADED
DEFAULT_TOKEN_REQUESTS_LOADED = 10_000
DEFAULT_REGISTRATIONS = 1_000
WARMUP_REQUESTS = 200
REGISTRATION_WARMUP = 50
BACKENDS = ("embedded", "postgres")
BCRYPT_COST = 10
BCRYPT_CHECKS = 40
HMAC_CHECKS = 20_000
TARGETS = {"register_p99_ms": 20.0, "token_p99_ms": 10.0, "tokens_per_second": 1_000.0}
TOKEN_FORM = b"grant_type=client_credentials"


@dataclass
class ServerReport:
    """Everything measured on one server process (and the floor beside it)."""

    name: str
    workers: int
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def at(self, scenario: str, concurrency: int) -> list[Row]:
        """Every run of ``scenario`` at ``concurrency``."""
        return [row for row in self.rows if row.label == scenario and row.concurrency == concurrency]


@dataclass(frozen=True)
class Fixture:
    """What the scenarios need: the prebuilt requests."""

    token_request: bytes
    register_request: bytes


def prepare(server: ServerProcess, admin_token: str) -> Fixture:
    """Sign up a tenant on the enterprise plan and register one agent, over HTTP as a user would."""
    with httpx.Client(base_url=server.base_url, timeout=30.0, trust_env=False) as client:
        signup = client.post(
            "/v1/tenants",
            json={
                "name": "Bench",
                "slug": f"bench-{secrets.token_hex(4)}",
                "owner_email": "bench@example.com",
                "owner_password": "correct horse battery staple",
                "plan_tier": "enterprise",
            },
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        signup.raise_for_status()
        api_key = signup.json()["api_key"]["key"]
        registered = client.post(
            "/v1/agents/register",
            json={"name": "bench-agent"},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        registered.raise_for_status()
        agent = registered.json()
    basic = base64.b64encode(f"{agent['client_id']}:{agent['client_secret']}".encode()).decode()
    token_request = build_request(
        "POST",
        "/oauth2/token",
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
        body=TOKEN_FORM,
    )
    register_request = build_request(
        "POST",
        "/v1/agents/register",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        body=json.dumps({"name": "bench-registered", "capabilities": {"tools": ["web_*"]}}).encode(),
    )
    return Fixture(token_request=token_request, register_request=register_request)


def token_requests_for(concurrency: int, override: int | None) -> int:
    """Token requests to time at ``concurrency``: ``--requests`` when given, else the default for it."""
    if override is not None:
        return override
    return DEFAULT_TOKEN_REQUESTS.get(concurrency, DEFAULT_TOKEN_REQUESTS_LOADED)


def bench_server(
    server: ServerProcess,
    floor: ServerProcess,
    admin_token: str,
    runner: LoadRunner,
    args: argparse.Namespace,
    *,
    concurrencies: list[int],
    registrations: int,
    workers: int,
) -> ServerReport:
    """Start ``server`` and its floor, prepare a tenant and an agent, run every scenario ``--repeat`` times.

    Each timed phase is preceded by the floor's with the same request bytes, client and concurrency.
    """
    report = ServerReport(name=server.name, workers=workers)
    with server, floor:
        fixture = prepare(server, admin_token)
        for run in range(1, args.repeat + 1):
            for concurrency in concurrencies:
                count = token_requests_for(concurrency, args.requests)
                figures, floor_figures = runner.run(
                    timed_pair(
                        server,
                        floor,
                        fixture.token_request,
                        concurrency=concurrency,
                        count=count,
                        warmup=args.warmup,
                    )
                )
                report.rows.append(Row.paired("token", concurrency, run, figures, floor_figures))
            if registrations:
                figures, floor_figures = runner.run(
                    timed_pair(
                        server,
                        floor,
                        fixture.register_request,
                        concurrency=1,
                        count=registrations,
                        warmup=REGISTRATION_WARMUP,
                        expect_status=201,
                    )
                )
                report.rows.append(Row.paired("register", 1, run, figures, floor_figures))
    report.problems = [
        f"{s.name}: exit code {s.exit_code} after SIGTERM" for s in (server, floor) if not s.stopped_cleanly
    ]
    report.problems += [
        f"{server.name}: {row.figures.errors} unexpected statuses in {row.label} at c={row.concurrency} "
        f"run {row.run} ({row.figures.refused})"
        for row in report.rows
        if row.figures.errors
    ]
    return report


def _time_each(check: Callable[[], bool], count: int) -> list[int]:
    clock = time.perf_counter_ns
    timings: list[int] = []
    for _ in range(count):
        start = clock()
        if not check():
            raise AssertionError("the reference check did not match")
        timings.append(clock() - start)
    timings.sort()
    return timings


def secret_check_reference() -> dict[str, Any]:
    """Per-check cost of bcrypt (cost 10) against HMAC-SHA256, for one client secret, p50 of each."""
    from aigos.core import secrets as aigos_secrets
    from aigos.server.identity.credentials import CLIENT_SECRET_PREFIX

    secret = aigos_secrets.mint(CLIENT_SECRET_PREFIX)
    pepper = os.urandom(32)
    stored = aigos_secrets.digest(secret, pepper)
    hmac_ns = _time_each(lambda: aigos_secrets.matches(secret, stored, pepper), HMAC_CHECKS)
    result: dict[str, Any] = {
        "hmac_sha256": {"checks": HMAC_CHECKS, "p50_us": round(percentile(hmac_ns, 0.5) / 1000, 2)},
    }
    try:
        import bcrypt
    except ImportError:
        result["bcrypt"] = None
        result["note"] = "bcrypt is not installed (.venv/bin/uv pip install bcrypt); no comparison"
        return result
    hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=BCRYPT_COST))
    bcrypt_ns = _time_each(lambda: bcrypt.checkpw(secret.encode(), hashed), BCRYPT_CHECKS)
    result["bcrypt"] = {
        "cost": BCRYPT_COST,
        "checks": BCRYPT_CHECKS,
        "version": getattr(bcrypt, "__version__", "?"),
        "p50_us": round(percentile(bcrypt_ns, 0.5) / 1000, 1),
    }
    result["ratio_bcrypt_over_hmac"] = round(percentile(bcrypt_ns, 0.5) / percentile(hmac_ns, 0.5))
    return result


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, Python and OS of this machine."""
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def _worst_of(rows: list[Row]) -> Row | None:
    if not rows:
        return None
    return worst(rows) if len(rows) > 1 else rows[0]


def verdicts(reports: list[ServerReport]) -> list[Target]:
    """The targets, on PostgreSQL when it was measured (over ``--repeat`` runs: the worst run)."""
    out: list[Target] = []
    postgres = next((report for report in reports if report.name == "postgres"), None)
    if postgres is not None:
        register = _worst_of(postgres.at("register", 1))
        token = _worst_of(postgres.at("token", 1))
        if register is not None:
            value = register.figures.p99_us / 1000
            out.append(
                Target(
                    "registration p99 at c=1, 1 worker", value, TARGETS["register_p99_ms"], "ms", strict=True
                )
            )
        if token is not None:
            value = token.figures.p99_us / 1000
            out.append(
                Target("token p99 at c=1, 1 worker", value, TARGETS["token_p99_ms"], "ms", strict=True)
            )
    two = next((report for report in reports if report.name == "pg-2w"), None)
    loaded = _worst_of(two.at("token", 32)) if two is not None else None
    if loaded is not None:
        out.append(
            Target(
                "tokens/s at c=32, 2 workers",
                loaded.figures.per_second,
                TARGETS["tokens_per_second"],
                "/s",
                below=False,
            )
        )
    return out


@contextmanager
def _environment(backend: str, admin_token: str) -> Iterator[dict[str, str]]:
    environment = embedded_environment if backend == "embedded" else postgres_environment
    with environment() as env:
        yield {
            **env,
            "AIGOS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
            # The per-key API limit (60/min by default) would cap the registration run.
            "AIGOS_DEFAULT_RATE_LIMIT_RPM": "10000000",
            "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
        }


def run_all(backends: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Measure each backend, one server (and its floor) at a time, then the secret-check reference."""
    reports: list[ServerReport] = []
    date = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    admin_token = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    # name, backend, workers, token concurrencies, registrations
    plan = [(backend, backend, 1, args.concurrency, args.registrations) for backend in backends]
    if "postgres" in backends:
        # Throughput on the whole machine: PostgreSQL + Redis allow a worker per core.
        plan.append(("pg-2w", "postgres", 2, [32], 0))
    with load_runner() as runner, tempfile.TemporaryDirectory(prefix="aigos-bench-token-") as tmp:
        workdir = Path(tmp)
        for name, backend, workers, concurrencies, registrations in plan:
            with _environment(backend, admin_token) as env:
                server = aigos_server(workdir / name, env, name=name, workers=workers)
                floor = floor_server(workdir / f"{name}-floor", env, name=f"{name}-floor", workers=workers)
                report = bench_server(
                    server,
                    floor,
                    admin_token,
                    runner,
                    args,
                    concurrencies=concurrencies,
                    registrations=registrations,
                    workers=workers,
                )
                reports.append(report)
        loop_name = runner.loop_name
    reference = secret_check_reference()
    return {
        "benchmark": "token",
        "what": "POST /oauth2/token (client_credentials, client_secret_basic) and POST /v1/agents/register",
        "date": date,
        "machine": machine_info(),
        "note": "numbers are from one run on this machine; read them as ratios to the same run's floor",
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "load_average_1m": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "settings": {
            "token_concurrency": args.concurrency,
            "token_requests": {str(c): token_requests_for(c, args.requests) for c in args.concurrency},
            "registrations": args.registrations,
            "warmup_requests": args.warmup,
            "repeat": args.repeat,
            "client_event_loop": loop_name,
        },
        "servers": reports,
        "targets": verdicts(reports),
        "secret_check": reference,
    }


def with_worst(rows: list[Row]) -> list[Row]:
    """Each phase's runs, then its worst row when there is more than one run."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.label, row.concurrency), []).append(row)
    out: list[Row] = []
    for group in groups.values():
        out += group
        if len(group) > 1:
            out.append(worst(group))
    return out


def format_table(data: dict[str, Any]) -> str:
    """The report as plain text."""
    machine, settings, load = data["machine"], data["settings"], data["load_average_1m"]
    counts = ", ".join(f"{n} at c={c}" for c, n in settings["token_requests"].items())
    lines = [
        f"AIGOS token benchmark: {data['what']}",
        f"machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['python']}, {machine['platform']}",
        f"date: {data['date']}; run {data['elapsed_seconds']:.0f} s",
        f"note: {data['note']} (1-min load average {load['start']:.2f} at start, {load['end']:.2f} at end)",
        f"setup: one server and its floor at a time; {settings['client_event_loop']} client; "
        f"tokens {counts}; {settings['registrations']} registrations at c=1; "
        f"{settings['warmup_requests']} warm-up; {settings['repeat']} run(s)",
    ]
    for report in data["servers"]:
        lines += [
            "",
            f"[{report.name}] {report.workers} worker(s), "
            + ("SQLite + in-process bus" if report.name == "embedded" else "PostgreSQL + Redis"),
            *format_rows(with_worst(report.rows))[:-1],
        ]
    lines.append(format_rows([])[-1])
    if data["targets"]:
        lines += ["", "targets (PostgreSQL)", *format_targets(data["targets"])]
    ref = data["secret_check"]
    lines += ["", "reference: checking one client secret, per check (p50)"]
    lines.append(f"  HMAC-SHA256 (AIGOS)      {ref['hmac_sha256']['p50_us']:>10.2f} µs")
    if ref.get("bcrypt"):
        bcrypt = ref["bcrypt"]
        lines.append(f"  bcrypt cost {bcrypt['cost']:<2}           {bcrypt['p50_us']:>10.1f} µs")
        lines.append(f"  bcrypt / HMAC            {ref['ratio_bcrypt_over_hmac']:>10,} x")
    else:
        lines.append(f"  bcrypt: {ref.get('note', 'unavailable')}")
    lines += [f"WARNING: {problem}" for report in data["servers"] for problem in report.problems]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--backend", choices=[*BACKENDS, "all"], default="all", help="Backend(s) to measure (default: all)."
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help=f"Token requests timed per concurrency (default: {DEFAULT_TOKEN_REQUESTS[1]} at c=1, "
        f"{DEFAULT_TOKEN_REQUESTS_LOADED} otherwise).",
    )
    parser.add_argument(
        "--registrations",
        type=int,
        default=DEFAULT_REGISTRATIONS,
        help=f"Registrations timed at c=1 (default: {DEFAULT_REGISTRATIONS}).",
    )
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=list(CONCURRENCY),
        help="Comma-separated concurrency levels of the token runs (default: 1,32).",
    )
    parser.add_argument(
        "--warmup", type=int, default=WARMUP_REQUESTS, help="Untimed token requests before each run."
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Run the timed phases this many times; print each and the worst.",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of tables.")
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.registrations < 1:
        parser.error("--registrations must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
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
    data = run_all(backends, args)
    print(json.dumps(data, indent=2, default=json_default) if args.json else format_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
