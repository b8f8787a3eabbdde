"""Kill switch: trigger-to-receipt latency and memory per open stream, two replicas on PostgreSQL + Redis.

For each N (default 100 and 1,000):

- start two ``aigos serve`` processes (A and B) on one fresh PostgreSQL database and one Redis prefix;
- sign up an enterprise tenant and register N agents on A (each with its identity token);
- measure both servers' resident memory (RSS), open N SSE streams (``GET /v1/kill-switch/stream``), half
  on A and half on B, with a minimal raw-socket client (asyncio streams, written here from the SSE and
  HTTP/1.1 chunked formats: no SSE library), measure RSS again: the difference per stream;
- tenant-wide: ``POST /v1/kill-switch/trigger`` ``{"all_agents": true, "command": "PAUSE"}`` on A; for every
  stream, the time from sending the trigger to reading its ``event: kill-switch`` data line (p50 / p99 / max,
  separately for streams on A and on B, where it arrived through Redis);
- right after the trigger answered: ``POST /v1/policies/check`` with a paused agent's token on A and on B,
  which must deny (``PAUSED``); skipped with a note while that endpoint does not exist; per replica, the
  time from sending the trigger until its checks deny (asked from that moment on, again and again, until
  they do), and the time until the fleet command's background bookkeeping (every agent's status) is done;
- tenant-wide RESUME on A (a fleet halt is lifted only by a fleet RESUME): trigger-to-receipt as above;
- single agent: with all N streams still open, one RESUME at a time for a sample of agents streaming from
  B (trigger on A), trigger-to-receipt per command (p50 / p99 / max);
- SIGTERM both servers with every stream still open: seconds to exit, exit codes.

Targets: receipt p99 < 100 ms with 1,000 agents connected; policy checks deny on every process within 1 s;
1,000 open streams add < 100 MB of resident memory across both processes.

Run: ``.venv/bin/python bench/killswitch.py [--agents 100,1000] [--sample 200] [--json]``. Needs PostgreSQL on
127.0.0.1:5432 (user ``postgres``) and Redis on 127.0.0.1:6379; the database and Redis keys are removed after.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``token``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0], where bench/token.py and bench/http.py would shadow
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
import resource
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench._server import HOST, ServerProcess, aigos_server, postgres_environment, rss_bytes

DEFAULT_AGENTS = (100, 1_000)
DEFAULT_SAMPLE = 200
TARGETS = {"receipt_p99_ms": 100.0, "deny_within_s": 1.0, "rss_mb_per_1000_streams": 100.0}


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (any order)."""
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: list[float]) -> dict[str, float]:
    """p50 / p99 / max in milliseconds of latencies given in seconds."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.50) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


class RawStream:
    """One SSE stream over a plain socket: HTTP/1.1 request, then lines as they come (chunked framing)."""

    def __init__(self, port: int, token: str, name: str) -> None:
        self.port = port
        self.token = token
        self.name = name
        self.opened = asyncio.Event()
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.ended = False
        self._writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        """Connect and read until the server ends the stream."""
        reader, writer = await asyncio.open_connection(HOST, self.port)
        self._writer = writer
        writer.write(
            (
                f"GET /v1/kill-switch/stream HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"stream refused: {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        try:
            event = b""
            while line := await reader.readline():
                if line.startswith(b": connected"):
                    self.opened.set()
                elif line.startswith(b"event: "):
                    event = line[7:].strip()
                elif line.startswith(b"data: ") and event != b"opened":
                    self.received.append((time.perf_counter(), json.loads(line[6:])))
                    for waiter in self.waiters:
                        if not waiter.done():
                            waiter.set_result(None)
                    self.waiters.clear()
        finally:
            self.ended = True
            self.opened.set()

    def next_receipt(self) -> asyncio.Future[None]:
        """A future resolved when the next command arrives."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        return future

    def close(self) -> None:
        """Drop the connection."""
        if self._writer is not None:
            self._writer.close()


@dataclass
class Report:
    """The figures of one run with N agents."""

    agents: int
    rss_before_mb: dict[str, float] = field(default_factory=dict)
    rss_after_mb: dict[str, float] = field(default_factory=dict)
    rss_per_stream_kb: float = 0.0
    rss_added_mb_total: float = 0.0
    open_seconds: float = 0.0
    tenant_wide_trigger_ms: float = 0.0
    tenant_wide_receipt: dict[str, dict[str, float]] = field(default_factory=dict)
    tenant_wide_missing: int = 0
    policy_check: dict[str, Any] = field(default_factory=dict)
    deny_after_trigger_ms: dict[str, float] = field(default_factory=dict)
    bookkeeping_done_ms: float = 0.0
    tenant_resume_trigger_ms: float = 0.0
    tenant_resume_receipt: dict[str, float] = field(default_factory=dict)
    single_receipt_from_b: dict[str, float] = field(default_factory=dict)
    single_trigger_ms: dict[str, float] = field(default_factory=dict)
    shutdown: dict[str, Any] = field(default_factory=dict)


async def register_agents(base_url: str, api_key: str, count: int) -> list[dict[str, Any]]:
    """``count`` agents registered concurrently (8 at a time)."""
    headers = {"Authorization": f"Bearer {api_key}"}
    agents: list[dict[str, Any]] = []
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=base_url, timeout=60.0, trust_env=False) as http:

        async def one(index: int) -> None:
            async with limit:
                response = await http.post("/v1/agents/register", json={"name": f"a{index}"}, headers=headers)
                response.raise_for_status()
                agents.append(response.json())

        await asyncio.gather(*(one(i) for i in range(count)))
    return agents


async def policy_deny(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    """One policy check with ``token``: the answer, or a note that the endpoint is missing."""
    started = time.perf_counter()
    response = await http.post(
        "/v1/policies/check",
        json={"action": "tool.call", "resource": "web_search", "context": {"tool": "web_search"}},
        headers={"Authorization": f"Bearer {token}"},
    )
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    if response.status_code == 404 and response.json().get("code") != "AGENT_NOT_FOUND":
        return {"skipped": "POST /v1/policies/check does not exist on this build"}
    body = response.json()
    return {
        "status": response.status_code,
        "allowed": body.get("allowed"),
        "code": body.get("code"),
        "ms": elapsed,
    }


async def time_to_deny(http: httpx.AsyncClient, token: str, sent: float) -> float:
    """Milliseconds from ``sent`` until a check with ``token`` answers ``PAUSED`` (asked until it does: a
    check's own latency bounds the resolution)."""
    deadline = sent + 30
    while time.perf_counter() < deadline:
        response = await http.post(
            "/v1/policies/check",
            json={"action": "tool.call", "resource": "web_search", "context": {"tool": "web_search"}},
            headers={"Authorization": f"Bearer {token}"},
        )
        if response.status_code == 200 and response.json().get("code") == "PAUSED":
            return round((time.perf_counter() - sent) * 1000, 2)
    return float("nan")


async def bookkept(http: httpx.AsyncClient, owner: dict[str, str], command_id: str, sent: float) -> float:
    """Milliseconds from ``sent`` until the fleet command's bookkeeping is done."""
    while time.perf_counter() < sent + 120:
        got = await http.get(f"/v1/kill-switch/fleet-commands/{command_id}", headers=owner)
        if got.status_code == 200 and got.json().get("bookkeeping_done_at"):
            return round((time.perf_counter() - sent) * 1000, 2)
        await asyncio.sleep(0.02)
    return float("nan")


async def run(a: ServerProcess, b: ServerProcess, admin_token: str, count: int, sample: int) -> Report:
    """The measurements for ``count`` agents on servers ``a`` (trigger) and ``b``."""
    report = Report(agents=count)
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=60.0, trust_env=False) as http_a,
        httpx.AsyncClient(base_url=b.base_url, timeout=60.0, trust_env=False) as http_b,
    ):
        signup = await http_a.post(
            "/v1/tenants",
            json={
                "name": "Bench",
                "slug": f"bench-{secrets.token_hex(4)}",
                "owner_email": f"bench-{secrets.token_hex(4)}@example.com",
                "owner_password": "correct horse battery staple",
                "plan_tier": "enterprise",
            },
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        signup.raise_for_status()
        owner = {"Authorization": f"Bearer {signup.json()['api_key']['key']}"}
        agents = await register_agents(a.base_url, signup.json()["api_key"]["key"], count)
        await asyncio.sleep(1.0)
        report.rss_before_mb = {
            "A": round(rss_bytes(a.pid) / 2**20, 1),
            "B": round(rss_bytes(b.pid) / 2**20, 1),
        }

        streams = [
            RawStream(a.port if i % 2 == 0 else b.port, agent["identity_token"], "A" if i % 2 == 0 else "B")
            for i, agent in enumerate(agents)
        ]
        started = time.perf_counter()
        tasks = []
        for start in range(0, len(streams), 50):
            batch = streams[start : start + 50]
            tasks += [asyncio.create_task(stream.run()) for stream in batch]
            await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in batch)), 60)
        report.open_seconds = round(time.perf_counter() - started, 2)
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed: {failed[0].exception()}")
        await asyncio.sleep(1.0)
        report.rss_after_mb = {
            "A": round(rss_bytes(a.pid) / 2**20, 1),
            "B": round(rss_bytes(b.pid) / 2**20, 1),
        }
        added = sum(report.rss_after_mb.values()) - sum(report.rss_before_mb.values())
        report.rss_added_mb_total = round(added, 1)
        report.rss_per_stream_kb = round(added * 1024 / count, 1)

        # Tenant-wide PAUSE on A.
        waits = [stream.next_receipt() for stream in streams]
        # The last agent's token: a halt covers every agent at once, whatever the order of their statuses.
        # Asked from the moment the trigger is sent, on both replicas, until they deny.
        last_token = agents[-1]["identity_token"]
        # Warm: the agent's first check on a replica loads the tenant's policies and its attributes.
        await asyncio.gather(policy_deny(http_a, last_token), policy_deny(http_b, last_token))
        sent = time.perf_counter()
        denying = [asyncio.create_task(time_to_deny(http, last_token, sent)) for http in (http_a, http_b)]
        response = await http_a.post(
            "/v1/kill-switch/trigger",
            json={"all_agents": True, "command": "PAUSE", "reason": "bench"},
            headers=owner,
        )
        answered = time.perf_counter()
        response.raise_for_status()
        report.tenant_wide_trigger_ms = round((answered - sent) * 1000, 2)
        paused_token = agents[0]["identity_token"]
        checks = await asyncio.gather(policy_deny(http_a, paused_token), policy_deny(http_b, paused_token))
        report.policy_check = {
            "A": checks[0],
            "B": checks[1],
            "since_trigger_ms": round((time.perf_counter() - sent) * 1000, 2),
        }
        denies = await asyncio.gather(*denying)
        report.deny_after_trigger_ms = {"A": denies[0], "B": denies[1]}
        _, pending = await asyncio.wait(waits, timeout=30)
        report.tenant_wide_missing = len(pending)
        fleet_id = response.json()["command_id"]
        report.bookkeeping_done_ms = await bookkept(http_a, owner, fleet_id, sent)
        latencies: dict[str, list[float]] = {"A": [], "B": []}
        for stream in streams:
            if stream.received:
                latencies[stream.name].append(stream.received[0][0] - sent)
        report.tenant_wide_receipt = {
            "A (local)": summary(latencies["A"]),
            "B (via Redis)": summary(latencies["B"]),
            "all": summary(latencies["A"] + latencies["B"]),
        }

        # Tenant-wide RESUME on A: lifts the halt (a single agent's RESUME would be refused under it).
        waits = [stream.next_receipt() for stream in streams]
        sent = time.perf_counter()
        response = await http_a.post(
            "/v1/kill-switch/trigger",
            json={"all_agents": True, "command": "RESUME", "reason": "bench"},
            headers=owner,
        )
        report.tenant_resume_trigger_ms = round((time.perf_counter() - sent) * 1000, 2)
        response.raise_for_status()
        await asyncio.wait(waits, timeout=30)
        report.tenant_resume_receipt = summary(
            [
                s.received[-1][0] - sent
                for s in streams
                if s.received and s.received[-1][1].get("command") == "RESUME"
            ]
        )
        await bookkept(http_a, owner, response.json()["command_id"], sent)

        # One RESUME at a time for agents streaming from B, triggered on A.
        single: list[float] = []
        trigger_times: list[float] = []
        on_b = [(stream, agent) for stream, agent in zip(streams, agents, strict=True) if stream.name == "B"]
        for stream, agent in on_b[:sample]:
            waiter = stream.next_receipt()
            sent = time.perf_counter()
            response = await http_a.post(
                "/v1/kill-switch/trigger",
                json={"agent_id": agent["agent_id"], "command": "RESUME", "reason": "bench"},
                headers=owner,
            )
            trigger_times.append(time.perf_counter() - sent)
            response.raise_for_status()
            await asyncio.wait_for(waiter, 10)
            single.append(stream.received[-1][0] - sent)
        report.single_receipt_from_b = summary(single)
        report.single_trigger_ms = summary(trigger_times)

        # SIGTERM with every stream open.
        for name, server in (("A", a), ("B", b)):
            started = time.perf_counter()
            code = await asyncio.to_thread(server.stop, 30.0)
            report.shutdown[name] = {"exit_code": code, "seconds": round(time.perf_counter() - started, 2)}
        await asyncio.sleep(0.5)
        report.shutdown["streams_ended"] = sum(stream.ended for stream in streams)
        for stream in streams:
            stream.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return report


def bench(count: int, sample: int, workdir: Path) -> Report:
    """Two fresh servers on a fresh database for ``count`` agents."""
    admin_token = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    with postgres_environment() as env:
        env = {
            **env,
            "AIGOS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
            "AIGOS_DEFAULT_RATE_LIMIT_RPM": "10000000",
            "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
            "AIGOS_DATABASE_POOL_SIZE": "10",
            # The set-up opens streams and registers agents in bursts: on a busy machine they would be
            # shed (503 OVERLOADED) after the default quarter second; this bench measures delivery instead.
            "AIGOS_ADMISSION_WAIT_SECONDS": "30",
            # Replicas behind one address name one issuer, so B accepts the tokens A issued.
            "AIGOS_ISSUER": "https://aigos.bench.example.com",
        }
        a = aigos_server(workdir / f"a{count}", env, name="A")
        b = aigos_server(workdir / f"b{count}", env, name="B")
        a.start()
        try:
            b.start()
            try:
                return asyncio.run(run(a, b, admin_token, count, sample))
            finally:
                b.kill()
        finally:
            a.kill()


def main() -> None:
    """Parse arguments, run each N, print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", default=",".join(map(str, DEFAULT_AGENTS)), help="Comma-separated N.")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="Single-agent triggers per N.")
    parser.add_argument("--json", action="store_true", help="Print JSON only.")
    args = parser.parse_args()
    # 1,000 sockets here and in the servers: lift the open-file limit to the hard limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    reports = []
    with tempfile.TemporaryDirectory(prefix="aigos-bench-killswitch-") as tmp:
        for count in (int(n) for n in args.agents.split(",")):
            reports.append(bench(count, args.sample, Path(tmp)))
            if not args.json:
                print(json.dumps(asdict(reports[-1]), indent=2), flush=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "targets": TARGETS,
        "runs": [asdict(report) for report in reports],
    }
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
