"""Token issuance and agent registration: latency and throughput on both backends, against bcrypt.

For each backend -- ``embedded`` (SQLite + in-process bus) and ``postgres`` (PostgreSQL + Redis) -- one
server at a time, one worker, on 127.0.0.1:

- start it, sign up a tenant (enterprise plan, through the platform-admin token), register one agent over
  HTTP and keep its client secret;
- ``POST /oauth2/token`` (``client_credentials``, ``client_secret_basic``, one prebuilt form request) at
  each concurrency (default 1 and 32): warm up, then time a fixed number of requests (p50 / p99 / max,
  tokens per second, server CPU share);
- ``POST /v1/agents/register`` at concurrency 1: every request creates an agent with a client secret and
  signs its first token (p50 / p99 / max);
- stop it with SIGTERM.

The reference it beats, measured in the same run: checking a client secret stored as bcrypt (cost 10),
the usual choice for passwords, against AIGOS's HMAC-SHA256 of a 256-bit secret
(``aigos.core.secrets.matches``), per check, p50 and the ratio. ``bcrypt`` is a benchmark-only dependency
(``.venv/bin/uv pip install bcrypt``); without it that part is reported as unavailable.

Targets (PostgreSQL, c=1): registration p99 < 20 ms, token p99 < 10 ms; at least 1,000 tokens/s.

Run: ``.venv/bin/python bench/token.py [--backend embedded|postgres|all] [--requests N] [--json]``.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import httpx

from bench._load import HttpLoadClient, LoadRunner, build_request, load_runner, percentile
from bench._server import (
    HOST,
    ServerProcess,
    aigos_server,
    cpu_seconds,
    embedded_environment,
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


@dataclass(frozen=True)
class ScenarioReport:
    """One scenario on one server: latency in microseconds, throughput, CPU shares."""

    scenario: str
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


@dataclass
class ServerReport:
    """Everything measured on one server process."""

    name: str
    scenarios: list[ScenarioReport] = field(default_factory=list)
    exit_code: int | None = None
    stopped_cleanly: bool = False

    def at(self, scenario: str, concurrency: int) -> ScenarioReport | None:
        """The ``scenario`` run at ``concurrency``, if it was run."""
        return next(
            (s for s in self.scenarios if s.scenario == scenario and s.concurrency == concurrency), None
        )


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


async def run_scenario(
    server: ServerProcess,
    scenario: str,
    request: bytes,
    *,
    concurrency: int,
    requests: int,
    warmup: int,
    expect_status: int,
) -> ScenarioReport:
    """Warm up, then time ``requests`` requests at ``concurrency`` while reading the server's CPU time."""
    client = HttpLoadClient(HOST, server.port, request, concurrency=concurrency, expect_status=expect_status)
    async with client:
        await client.run(max(warmup, concurrency))
        cpu_before = cpu_seconds(server.pid)
        result = await client.run(requests)
        server_cpu = cpu_seconds(server.pid) - cpu_before
    return ScenarioReport(
        scenario=scenario,
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
    )


def token_requests_for(concurrency: int, override: int | None) -> int:
    """Token requests to time at ``concurrency``: ``--requests`` when given, else the default for it."""
    if override is not None:
        return override
    return DEFAULT_TOKEN_REQUESTS.get(concurrency, DEFAULT_TOKEN_REQUESTS_LOADED)


def bench_server(
    server: ServerProcess,
    admin_token: str,
    runner: LoadRunner,
    concurrencies: list[int],
    override: int | None,
    registrations: int,
    warmup: int,
) -> ServerReport:
    """Start ``server``, prepare a tenant and an agent, run every scenario, stop it with SIGTERM."""
    report = ServerReport(name=server.name)
    with server:
        fixture = prepare(server, admin_token)
        for concurrency in concurrencies:
            scenario = run_scenario(
                server,
                "token",
                fixture.token_request,
                concurrency=concurrency,
                requests=token_requests_for(concurrency, override),
                warmup=warmup,
                expect_status=200,
            )
            report.scenarios.append(runner.run(scenario))
        if registrations:
            report.scenarios.append(runner.run(_registration(server, fixture, registrations)))
    report.exit_code = server.exit_code
    report.stopped_cleanly = server.stopped_cleanly
    return report


def _registration(server: ServerProcess, fixture: Any, registrations: int) -> Any:
    """The registration scenario at concurrency 1."""
    return run_scenario(
        server,
        "register",
        fixture.register_request,
        concurrency=1,
        requests=registrations,
        warmup=REGISTRATION_WARMUP,
        expect_status=201,
    )


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


def verdicts(reports: list[ServerReport]) -> list[dict[str, Any]]:
    """The targets, checked on the PostgreSQL server when it was measured."""
    postgres = next((report for report in reports if report.name == "postgres"), None)
    if postgres is None:
        return []
    # Tokens/s is the machine's: the best of one worker and of one worker per core.
    throughput = [report for report in reports if report.name in ("postgres", "pg-2w")]
    out: list[dict[str, Any]] = []
    register = postgres.at("register", 1)
    token = postgres.at("token", 1)
    best = max(
        (s.requests_per_second for r in throughput for s in r.scenarios if s.scenario == "token"), default=0.0
    )
    if register is not None:
        value = register.p99_us / 1000
        out.append(_verdict("registration p99 at c=1 (ms)", value, TARGETS["register_p99_ms"], below=True))
    if token is not None:
        value = token.p99_us / 1000
        out.append(_verdict("token p99 at c=1 (ms)", value, TARGETS["token_p99_ms"], below=True))
    out.append(
        _verdict("tokens/s (best of 1 and 2 workers)", best, TARGETS["tokens_per_second"], below=False)
    )
    return out


def _verdict(name: str, value: float, target: float, *, below: bool) -> dict[str, Any]:
    met = value < target if below else value >= target
    return {"target": name, "value": round(value, 3), "limit": target, "below": below, "met": met}


def run_all(
    backends: list[str], concurrencies: list[int], override: int | None, registrations: int, warmup: int
) -> dict[str, Any]:
    """Measure each backend, one server at a time, then the secret-check reference; the whole report."""
    reports: list[ServerReport] = []
    date = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    admin_token = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    with load_runner() as runner, tempfile.TemporaryDirectory(prefix="aigos-bench-token-") as tmp:
        workdir = Path(tmp)
        for backend in backends:
            environment = embedded_environment if backend == "embedded" else postgres_environment
            with environment() as env:
                env = {
                    **env,
                    "AIGOS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
                    # The per-key API limit (60/min by default) would cap the registration run.
                    "AIGOS_DEFAULT_RATE_LIMIT_RPM": "10000000",
                    "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
                }
                server = aigos_server(workdir / backend, env, name=backend)
                reports.append(
                    bench_server(server, admin_token, runner, concurrencies, override, registrations, warmup)
                )
            if backend == "postgres":
                # Throughput on the whole machine: PostgreSQL + Redis allow a worker per core.
                with environment() as env:
                    env = {
                        **env,
                        "AIGOS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
                        "AIGOS_DEFAULT_RATE_LIMIT_RPM": "10000000",
                        "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
                    }
                    server = aigos_server(workdir / "postgres-2w", env, name="pg-2w", workers=2)
                    reports.append(bench_server(server, admin_token, runner, [32], override, 0, warmup))
                continue
                reports.append(
                    bench_server(server, admin_token, runner, concurrencies, override, registrations, warmup)
                )
        loop_name = runner.loop_name
    reference = secret_check_reference()
    return {
        "benchmark": "token",
        "what": "POST /oauth2/token (client_credentials, client_secret_basic) and POST /v1/agents/register",
        "date": date,
        "machine": machine_info(),
        "note": "numbers are from one run on this machine; compare runs on the same machine only",
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "load_average_1m": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "settings": {
            "token_concurrency": concurrencies,
            "token_requests": {str(c): token_requests_for(c, override) for c in concurrencies},
            "registrations": registrations,
            "warmup_requests": warmup,
            "server_workers": {"embedded": 1, "postgres": 1, "pg-2w": 2},
            "client_event_loop": loop_name,
        },
        "servers": [server_json(report) for report in reports],
        "targets": verdicts(reports),
        "secret_check": reference,
    }


def server_json(report: ServerReport) -> dict[str, Any]:
    """One server's report as JSON-ready data (figures rounded)."""
    return {
        "name": report.name,
        "exit_code": report.exit_code,
        "stopped_cleanly": report.stopped_cleanly,
        "scenarios": [
            {key: round(value, 3) if isinstance(value, float) else value for key, value in asdict(s).items()}
            for s in report.scenarios
        ],
    }


def format_table(data: dict[str, Any]) -> str:
    """The report as plain text."""
    machine, settings, load = data["machine"], data["settings"], data["load_average_1m"]
    counts = ", ".join(f"{n} at c={c}" for c, n in settings["token_requests"].items())
    lines = [
        f"AIGOS token benchmark: {data['what']}",
        f"machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['python']}, {machine['platform']}",
        f"date: {data['date']}; run {data['elapsed_seconds']:.0f} s",
        f"note: {data['note']} (1-min load average {load['start']:.2f} at start, {load['end']:.2f} at end)",
        f"setup: one server at a time, 1 worker (pg-2w: PostgreSQL + Redis, 2 workers); "
        f"{settings['client_event_loop']} client; tokens {counts}; "
        f"{settings['registrations']} registrations at c=1; {settings['warmup_requests']} warm-up",
        "",
        f"{'server':<9} {'scenario':<9} {'conc':>4} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'req/s':>8} {'srv cpu':>7} {'cli cpu':>7}",
    ]
    for server in data["servers"]:
        for s in server["scenarios"]:
            lines.append(
                f"{server['name']:<9} {s['scenario']:<9} {s['concurrency']:>4} {s['requests']:>8} "
                f"{s['p50_us'] / 1000:>8.3f} {s['p99_us'] / 1000:>8.3f} {s['max_us'] / 1000:>8.3f} "
                f"{s['requests_per_second']:>8.0f} {s['server_cpu_share']:>7.0%} "
                f"{s['client_cpu_share']:>7.0%}"
            )
    lines.append(
        "(cpu: CPU time over wall time, 100% = one core busy; srv = server process, cli = load client)"
    )
    if data["targets"]:
        lines += ["", "targets (PostgreSQL)"]
        for t in data["targets"]:
            sign = "<" if t["below"] else ">="
            verdict = "met" if t["met"] else "NOT MET"
            lines.append(f"  {t['target']:<32} {t['value']:>10.3f}   {sign} {t['limit']:g}: {verdict}")
    ref = data["secret_check"]
    lines += ["", "reference: checking one client secret, per check (p50)"]
    lines.append(f"  HMAC-SHA256 (AIGOS)      {ref['hmac_sha256']['p50_us']:>10.2f} µs")
    if ref.get("bcrypt"):
        bcrypt = ref["bcrypt"]
        lines.append(f"  bcrypt cost {bcrypt['cost']:<2}           {bcrypt['p50_us']:>10.1f} µs")
        lines.append(f"  bcrypt / HMAC            {ref['ratio_bcrypt_over_hmac']:>10,} x")
    else:
        lines.append(f"  bcrypt: {ref.get('note', 'unavailable')}")
    problems = [
        f"{server['name']}: {s['errors']} unexpected statuses in {s['scenario']} at c={s['concurrency']}"
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
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of tables.")
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.registrations < 1:
        parser.error("--registrations must be at least 1")
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
    data = run_all(backends, args.concurrency, args.requests, args.registrations, args.warmup)
    print(json.dumps(data, indent=2) if args.json else format_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
