"""Kill switch: trigger-to-receipt latency, memory per open stream and event-loop pauses, two replicas on
PostgreSQL + Redis.

For each N (default 100 and 1,000; ``--agents 10000`` for a fleet):

- start two ``aigos serve`` processes (A and B) on one fresh PostgreSQL database and one Redis prefix, with
  the open-file limit raised to its hard limit (inherited by the servers);
- sign up an enterprise tenant and register N agents on A (each with its identity token);
- measure both servers' resident memory (RSS), open N SSE streams (``GET /v1/kill-switch/stream``), half
  on A and half on B, with a minimal client written here on asyncio protocols (one socket and a few bytes
  of state per stream: no HTTP or SSE library), measure RSS again: the difference per stream;
- tenant-wide: ``POST /v1/kill-switch/trigger`` ``{"all_agents": true, "command": "PAUSE"}`` on A; for every
  stream, the time from sending the trigger to reading an ``event: kill-switch`` frame (p50 / p99 / max,
  separately for streams on A and on B, where it arrived through Redis or PostgreSQL); whatever the server
  sends (a command per agent, or one fleet command, ``event: kill-switch-fleet``) counts as the agent's
  receipt, the ``opened`` frame does not;
- meanwhile ``POST /v1/policies/check`` with a paused agent's token on A and on B (warmed before the
  trigger), every 20 ms until both deny (``PAUSED``): the time from sending the trigger to the first denial
  on each replica; then the time until the fleet command's background bookkeeping (every agent's status)
  is done;
- each server's longest event-loop pause during the fan-out (``aigos_event_loop_lag_max_seconds`` from
  ``/metrics``, the longest of the last few seconds: read once every stream has its command, after a quiet
  wait before the trigger);
- tenant-wide RESUME on A (a fleet halt is lifted only by a fleet RESUME; a single agent's RESUME under it
  is refused, 409 ``FLEET_HALT_ACTIVE``): trigger-to-receipt as above;
- single agent: with all N streams still open, one RESUME at a time for a sample of agents streaming from
  B (trigger on A), trigger-to-receipt per command (p50 / p99 / max);
- SIGTERM both servers with every stream still open: seconds to exit, exit codes.

Each figure is printed beside its target (``TARGETS``). The machine's load shows in every latency: the
client runs on the same cores as both servers and the databases.

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
import re
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
#: Streams opened at once (each waits for its ``opened`` event); a 503 is retried after a pause.
OPEN_CONCURRENCY = 100
TARGETS = {
    "tenant_wide_trigger_ms": 50.0,
    "tenant_wide_receipt_p99_ms": 100.0,
    # The figure for 10,000 agents and more.
    "tenant_wide_receipt_p99_ms_10k": 500.0,
    "single_receipt_p99_ms": 50.0,
    "deny_within_ms": 100.0,  # checks deny on every replica within 100 ms
    "rss_kb_per_stream": 20.0,
    "loop_pause_ms": 50.0,
}
LOOP_LAG = re.compile(rb"^aigos_event_loop_lag_max_seconds ([0-9.e+-]+)$", re.MULTILINE)
#: The servers' gauge is the longest pause over their last few one-second samples: waiting this long
#: before a phase keeps the set-up's pauses out of the phase's figure.
LAG_WINDOW_SECONDS = 6.0


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


class SseClient(asyncio.Protocol):
    """One SSE stream over a plain socket: the request written at connect, then bytes as they come.

    It does not parse the stream: it notes when the head said 200, when ``: connected`` arrived, and the
    time of every ``event: kill-switch`` frame (a frame split across two reads is found on the second, since
    the unread tail of the previous read is kept).
    """

    __slots__ = ("_tail", "ended", "name", "opened", "received", "request", "status", "transport", "waiter")

    def __init__(self, name: str, request: bytes) -> None:
        self.name = name
        self.request = request
        self.opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.ended = False
        self.status = 0
        self.received: list[float] = []
        self.waiter: asyncio.Future[None] | None = None
        self._tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        data = self._tail + data
        if not self.status and data.startswith(b"HTTP/1.1 "):
            self.status = int(data[9:12])
            if self.status != 200 and not self.opened.done():
                self.opened.set_result(self.status)
        if not self.opened.done() and b": connected" in data:
            self.opened.set_result(200)
        frames = data.count(b"event: kill-switch")
        if frames:
            self.received.extend([now] * frames)
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
        self._tail = data[-32:]
        if b"event: kill-switch" in self._tail:  # counted already: do not count it again next time
            self._tail = self._tail[self._tail.rindex(b"event: kill-switch") + 1 :]

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if not self.opened.done():
            self.opened.set_result(self.status or 0)

    def next_receipt(self) -> asyncio.Future[None]:
        """A future resolved when the next command arrives."""
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    def close(self) -> None:
        """Drop the connection."""
        if self.transport is not None:
            self.transport.close()


async def open_stream(port: int, token: str, name: str) -> SseClient:
    """An open stream (its ``: connected`` comment read), retrying while the server sheds (503)."""
    request = (
        f"GET /v1/kill-switch/stream HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    for _ in range(60):
        _, client = await loop.create_connection(lambda: SseClient(name, request), HOST, port)
        status = await asyncio.wait_for(client.opened, 120)
        if status == 200:
            return client
        client.close()
        if status != 503:
            raise RuntimeError(f"stream refused: {status}")
        await asyncio.sleep(0.5)
    raise RuntimeError("stream refused: 503 sixty times")


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
    deny_after_ms: dict[str, Any] = field(default_factory=dict)
    loop_pause_ms: dict[str, float] = field(default_factory=dict)
    bookkeeping_done_ms: float = 0.0
    tenant_resume_trigger_ms: float = 0.0
    tenant_resume_receipt: dict[str, float] = field(default_factory=dict)
    single_receipt_from_b: dict[str, float] = field(default_factory=dict)
    single_trigger_ms: dict[str, float] = field(default_factory=dict)
    single_receipt_after_answer_ms: dict[str, float] = field(default_factory=dict)
    shutdown: dict[str, Any] = field(default_factory=dict)


async def register_agents(base_url: str, api_key: str, count: int) -> list[dict[str, Any]]:
    """``count`` agents registered concurrently (16 at a time), in index order."""
    headers = {"Authorization": f"Bearer {api_key}"}
    agents: list[dict[str, Any]] = [{} for _ in range(count)]
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0, trust_env=False) as http:

        async def one(index: int) -> None:
            async with limit:
                for _ in range(20):
                    response = await http.post(
                        "/v1/agents/register", json={"name": f"a{index}"}, headers=headers
                    )
                    if response.status_code != 503:
                        break
                    await asyncio.sleep(0.5)
                response.raise_for_status()
                agents[index] = response.json()

        await asyncio.gather(*(one(i) for i in range(count)))
    return agents


async def policy_check(http: httpx.AsyncClient, token: str) -> str:
    """One policy check with ``token``: ``deny`` (``PAUSED``), ``missing`` (no endpoint), else the status
    and code it got (allowed, shed, refused for another reason)."""
    response = await http.post(
        "/v1/policies/check",
        json={"action": "tool.call", "resource": "web_search", "context": {"tool": "web_search"}},
        headers={"Authorization": f"Bearer {token}"},
    )
    if response.status_code == 404 and response.json().get("code") != "AGENT_NOT_FOUND":
        return "missing"
    body = response.json()
    if response.status_code == 200 and body.get("allowed") is False and body.get("code") == "PAUSED":
        return "deny"
    return f"{response.status_code} {body.get('code')}"


async def until_denied(http: httpx.AsyncClient, token: str, sent: float, within: float = 60.0) -> Any:
    """Milliseconds from ``sent`` to the first check that denies (every 20 ms), or why there is none."""
    while time.perf_counter() - sent < within:
        outcome = await policy_check(http, token)
        if outcome == "deny":
            return round((time.perf_counter() - sent) * 1000, 2)
        if outcome == "missing":
            return "POST /v1/policies/check does not exist on this build"
        await asyncio.sleep(0.02)
    return f"still allowed after {within:.0f} s"


async def loop_pause(http: httpx.AsyncClient) -> float:
    """The server's longest event-loop pause (ms) over its last few one-second samples."""
    response = await http.get("/metrics")
    found = LOOP_LAG.search(response.content)
    return round(float(found.group(1)) * 1000, 2) if found else float("nan")


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
        httpx.AsyncClient(base_url=a.base_url, timeout=120.0, trust_env=False) as http_a,
        httpx.AsyncClient(base_url=b.base_url, timeout=120.0, trust_env=False) as http_b,
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

        started = time.perf_counter()
        limit = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def opened(index: int, agent: dict[str, Any]) -> SseClient:
            server, name = (a, "A") if index % 2 == 0 else (b, "B")
            async with limit:
                return await open_stream(server.port, agent["identity_token"], name)

        streams = await asyncio.gather(*(opened(i, agent) for i, agent in enumerate(agents)))
        report.open_seconds = round(time.perf_counter() - started, 2)
        await asyncio.sleep(2.0)
        report.rss_after_mb = {
            "A": round(rss_bytes(a.pid) / 2**20, 1),
            "B": round(rss_bytes(b.pid) / 2**20, 1),
        }
        added = sum(report.rss_after_mb.values()) - sum(report.rss_before_mb.values())
        report.rss_added_mb_total = round(added, 1)
        report.rss_per_stream_kb = round(added * 1024 / count, 1)

        # Tenant-wide PAUSE on A; checks polled on both replicas meanwhile.
        waits = [stream.next_receipt() for stream in streams]
        # The last agent's token: a halt covers every agent at once, whatever the order of their statuses.
        paused_token = agents[-1]["identity_token"]
        # Warm: the agent's first check on a replica loads the tenant's policies and its attributes.
        await asyncio.gather(policy_check(http_a, paused_token), policy_check(http_b, paused_token))
        await asyncio.sleep(LAG_WINDOW_SECONDS)
        sent = time.perf_counter()
        trigger = asyncio.create_task(
            http_a.post(
                "/v1/kill-switch/trigger",
                json={"all_agents": True, "command": "PAUSE", "reason": "bench"},
                headers=owner,
            )
        )
        denied = asyncio.gather(
            until_denied(http_a, paused_token, sent), until_denied(http_b, paused_token, sent)
        )
        response = await trigger
        report.tenant_wide_trigger_ms = round((time.perf_counter() - sent) * 1000, 2)
        response.raise_for_status()
        _, pending = await asyncio.wait(waits, timeout=120)
        report.loop_pause_ms = dict(
            zip(("A", "B"), await asyncio.gather(loop_pause(http_a), loop_pause(http_b)), strict=True)
        )
        deny_a, deny_b = await denied
        report.deny_after_ms = {"A": deny_a, "B": deny_b}
        report.tenant_wide_missing = len(pending)
        fleet_id = response.json()["command_id"]
        report.bookkeeping_done_ms = await bookkept(http_a, owner, fleet_id, sent)
        latencies: dict[str, list[float]] = {"A": [], "B": []}
        for stream in streams:
            if stream.received:
                latencies[stream.name].append(stream.received[0] - sent)
        report.tenant_wide_receipt = {
            "A (local)": summary(latencies["A"]),
            "B (other replica)": summary(latencies["B"]),
            "all": summary(latencies["A"] + latencies["B"]),
        }

        # Tenant-wide RESUME on A: lifts the halt (a single agent's RESUME would be refused under it).
        before = [len(stream.received) for stream in streams]
        waits = [stream.next_receipt() for stream in streams]
        sent = time.perf_counter()
        response = await http_a.post(
            "/v1/kill-switch/trigger",
            json={"all_agents": True, "command": "RESUME", "reason": "bench"},
            headers=owner,
        )
        report.tenant_resume_trigger_ms = round((time.perf_counter() - sent) * 1000, 2)
        response.raise_for_status()
        await asyncio.wait(waits, timeout=120)
        report.tenant_resume_receipt = summary(
            [
                stream.received[seen] - sent
                for stream, seen in zip(streams, before, strict=True)
                if len(stream.received) > seen
            ]
        )
        await bookkept(http_a, owner, response.json()["command_id"], sent)

        # One RESUME at a time for agents streaming from B, triggered on A.
        single: list[float] = []
        trigger_times: list[float] = []
        # Negative when the command reached B before A's answer reached the client.
        after_answer: list[float] = []
        on_b = [(stream, agent) for stream, agent in zip(streams, agents, strict=True) if stream.name == "B"]
        for stream, agent in on_b[:sample]:
            waiter = stream.next_receipt()
            sent = time.perf_counter()
            response = await http_a.post(
                "/v1/kill-switch/trigger",
                json={"agent_id": agent["agent_id"], "command": "RESUME", "reason": "bench"},
                headers=owner,
            )
            answered = time.perf_counter()
            trigger_times.append(answered - sent)
            if response.is_error:
                raise RuntimeError(f"single-agent RESUME: {response.status_code} {response.text}")
            await asyncio.wait_for(waiter, 10)
            single.append(stream.received[-1] - sent)
            after_answer.append(stream.received[-1] - answered)
        report.single_receipt_from_b = summary(single)
        report.single_trigger_ms = summary(trigger_times)
        report.single_receipt_after_answer_ms = summary(after_answer)

        # SIGTERM with every stream open.
        for name, server in (("A", a), ("B", b)):
            started = time.perf_counter()
            code = await asyncio.to_thread(server.stop, 60.0)
            report.shutdown[name] = {"exit_code": code, "seconds": round(time.perf_counter() - started, 2)}
        await asyncio.sleep(0.5)
        report.shutdown["streams_ended"] = sum(stream.ended for stream in streams)
        for stream in streams:
            stream.close()
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
            # With thousands of agents and streams on a busy machine, a request can take longer than the
            # default 5 s deadline, and would be refused rather than measured.
            "AIGOS_REQUEST_DEADLINE_SECONDS": "300",
        }
        a = aigos_server(workdir / f"a{count}", env, name="A")
        b = aigos_server(workdir / f"b{count}", env, name="B")
        a.start()
        try:
            b.start()
            try:
                return asyncio.run(run(a, b, admin_token, count, sample))
            except Exception:
                # Why a request failed is in the answer and the servers' logs, both gone once this returns.
                for server in (a, b):
                    print(f"--- {server.name}: last lines\n{server.output_tail()}", file=sys.stderr)
                raise
            finally:
                b.kill()
        finally:
            a.kill()


def _vs(value: Any, target: float, unit: str) -> str:
    if not isinstance(value, int | float):
        return f"{value}"
    verdict = "ok" if value < target else "OVER"
    return f"{value} {unit}  (target < {target:g} {unit}: {verdict})"


def figures(report: Report) -> list[str]:
    """The run's figures, one a line, each beside its target."""
    receipt = report.tenant_wide_receipt
    lines = [
        f"== {report.agents} agents (streams opened in {report.open_seconds} s, half on A, half on B)",
        f"RSS per open stream:      {_vs(report.rss_per_stream_kb, TARGETS['rss_kb_per_stream'], 'KB')}"
        f"   (A {report.rss_before_mb.get('A')} -> {report.rss_after_mb.get('A')} MB,"
        f" B {report.rss_before_mb.get('B')} -> {report.rss_after_mb.get('B')} MB)",
        "tenant-wide trigger:      "
        + _vs(report.tenant_wide_trigger_ms, TARGETS["tenant_wide_trigger_ms"], "ms"),
    ]
    receipt_target = TARGETS[
        "tenant_wide_receipt_p99_ms_10k" if report.agents >= 10_000 else "tenant_wide_receipt_p99_ms"
    ]
    for name in ("A (local)", "B (other replica)"):
        stats = receipt.get(name, {})
        lines.append(
            f"receipt {name:18s} p50 {stats.get('p50_ms')} ms, max {stats.get('max_ms')} ms, p99 "
            + _vs(stats.get("p99_ms"), receipt_target, "ms")
        )
    lines.append(f"streams without receipt:  {report.tenant_wide_missing}")
    lines.append(f"fleet bookkeeping done:   {report.bookkeeping_done_ms} ms after the trigger")
    for name, value in report.deny_after_ms.items():
        lines.append(f"checks deny on {name} after:  {_vs(value, TARGETS['deny_within_ms'], 'ms')}")
    for name, value in report.loop_pause_ms.items():
        lines.append(f"loop pause on {name} (fan-out): {_vs(value, TARGETS['loop_pause_ms'], 'ms')}")
    resume = report.tenant_resume_receipt
    lines.append(
        f"tenant-wide RESUME:       trigger {report.tenant_resume_trigger_ms} ms, receipt n={resume.get('n')}"
        f" p50 {resume.get('p50_ms')} ms, p99 {resume.get('p99_ms')} ms, max {resume.get('max_ms')} ms"
    )
    single = report.single_receipt_from_b
    lines.append(
        f"single agent, B, n={single.get('n')}: p50 {single.get('p50_ms')} ms, "
        f"max {single.get('max_ms')} ms, "
        f"p99 {_vs(single.get('p99_ms'), TARGETS['single_receipt_p99_ms'], 'ms')}"
    )
    trigger, after = report.single_trigger_ms, report.single_receipt_after_answer_ms
    lines.append(
        f"  of which the trigger on A: p50 {trigger.get('p50_ms')} ms, p99 {trigger.get('p99_ms')} ms;"
        f" receipt minus answer: p50 {after.get('p50_ms')} ms, p99 {after.get('p99_ms')} ms"
    )
    lines.append(f"shutdown: {report.shutdown}")
    return lines


def main() -> None:
    """Parse arguments, run each N, print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", default=",".join(map(str, DEFAULT_AGENTS)), help="Comma-separated N.")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="Single-agent triggers per N.")
    parser.add_argument("--json", action="store_true", help="Print JSON only.")
    args = parser.parse_args()
    counts = [int(n) for n in args.agents.split(",")]
    # Every stream is a socket here and in a server (the servers inherit this limit): lift it to the hard
    # limit, and say so if that is too low for the largest N.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < max(counts) + 1_000:
        raise SystemExit(f"the open-file hard limit ({hard}) is too low for {max(counts)} streams")
    reports = []
    with tempfile.TemporaryDirectory(prefix="aigos-bench-killswitch-") as tmp:
        for count in counts:
            reports.append(bench(count, args.sample, Path(tmp)))
            if not args.json:
                print("\n".join(figures(reports[-1])), flush=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "targets": TARGETS,
        "runs": [asdict(report) for report in reports],
    }
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
