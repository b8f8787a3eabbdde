"""The real server process: first start prints the bootstrap token once, SIGTERM exits cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.helpers import prometheus_samples, signup_at
from tests.prometheus import Prometheus
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow

TOKEN = re.compile(r"aigos_pat_[A-Za-z0-9_\-]{40,}")


def test_embedded_first_start_prints_token_once_and_sigterm_exits(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path, {"AIGOS_LOG_FORMAT": "json"}).start()
    try:
        assert httpx.get(first.base_url + "/health/ready").status_code == 200
        assert (tmp_path / ".aigos" / "aigos.db").exists()
    finally:
        started = time.monotonic()
        code = first.terminate()
    assert code == 0
    assert time.monotonic() - started < 10
    printed = TOKEN.findall(first.output())
    assert len(printed) == 1

    with ServerProcess(tmp_path, {}) as second:
        assert httpx.get(second.base_url + "/v1/info").json()["backends"]["database"] == "sqlite"
    assert TOKEN.findall(second.output()) == []


def test_embedded_data_folder_is_private_and_served_by_one_process(tmp_path: Path) -> None:
    env = {"AIGOS_SECRET_KEY": ""}  # the embedded mode generates its own key in the folder
    with ServerProcess(tmp_path / "one", env) as first:
        data = tmp_path / "one" / ".aigos"
        assert data.stat().st_mode & 0o777 == 0o700
        for name in ("aigos.db", "secret.key"):
            assert (data / name).stat().st_mode & 0o777 == 0o600, name
        # Anything SQLite or the server created beside them is private too.
        assert [p.name for p in data.iterdir() if p.stat().st_mode & 0o077] == []

        # A second server on the same folder is refused at once, with the reason.
        second = ServerProcess(tmp_path / "one", env)
        with pytest.raises(RuntimeError, match="already using the database") as refused:
            second.start()
        assert second.process is not None
        assert second.process.returncode == 2
        assert str(first.process.pid if first.process else "") in str(refused.value)
        assert httpx.get(first.base_url + "/health/ready").status_code == 200
    # Once the first has stopped, the folder is free again.
    with ServerProcess(tmp_path / "one", env) as again:
        assert httpx.get(again.base_url + "/health/ready").status_code == 200


def test_access_log_is_json_with_request_fields(tmp_path: Path) -> None:
    import json

    with ServerProcess(tmp_path, {"AIGOS_LOG_FORMAT": "json"}) as server:
        httpx.get(server.base_url + "/v1/info", headers={"X-Request-ID": "log-check-1"})
        # A caller's W3C trace context names the trace in every line logged for its request.
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        httpx.get(
            server.base_url + "/v1/info", headers={"X-Request-ID": "log-check-2", "traceparent": traceparent}
        )
        time.sleep(0.2)
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    entry = next(line for line in lines if line.get("request_id") == "log-check-1")
    assert entry["event"] == "request"
    assert entry["method"] == "GET"
    assert entry["path"] == "/v1/info"
    assert entry["status"] == 200
    assert isinstance(entry["latency_ms"], float)
    assert "trace_id" not in entry
    traced = next(line for line in lines if line.get("request_id") == "log-check-2")
    assert (traced["trace_id"], traced["span_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


def test_two_workers_answer_one_scrape_for_both_and_prometheus_reads_it(
    tmp_path: Path, replica_env: dict[str, str]
) -> None:
    env = {key: value for key, value in replica_env.items() if key != "AIGOS_BOOTSTRAP_ADMIN_TOKEN"}
    with ServerProcess(tmp_path, env, args=["--workers", "2"]) as server:
        body = httpx.get(server.base_url + "/v1/info").json()
        assert body["backends"] == {"database": "postgresql", "bus": "redis", "embedded": False}
        assert httpx.get(server.base_url + "/health/ready").status_code == 200
        assert server.process is not None
        pid = server.process.pid
        deadline = time.monotonic() + 30
        while len(_sockets(server.port, "0A")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        # multiprocessing's resource tracker is a child too.
        workers = [c for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2

        tenant = signup_at(server.base_url)
        agent = httpx.post(
            server.base_url + "/v1/agents/register", json={"name": "bot"}, headers=tenant.headers
        ).json()
        checks = 40
        for _ in range(checks):  # a connection each: the kernel spreads them over both workers
            answer = httpx.post(
                server.base_url + "/v1/policies/check",
                json={"action": "read", "resource": "db"},
                headers={"Authorization": f"Bearer {agent['identity_token']}"},
            )
            assert answer.status_code == 200, answer.text
        # Whichever worker answers a scrape, it counts both workers' checks; the streams' limit is a
        # sum over the live workers, so both workers' samples are in it.
        limits = sum(_open_files_limit(worker) for worker in workers)
        for _ in range(6):
            scraped = prometheus_samples(httpx.get(server.base_url + "/metrics").text)
            assert sum(v for k, v in scraped.items() if k.startswith("aigos_policy_checks_total")) == checks
            assert (
                scraped['aigos_http_requests_total{method="POST",route="/v1/policies/check",status="200"}']
                == checks
            )
            assert scraped["aigos_policy_check_duration_seconds_count"] == checks
            assert scraped["aigos_agent_registrations_total"] == 1
            assert scraped["aigos_killswitch_streams_limit"] == limits

        # A real Prometheus scrapes the replica and evaluates every alerting rule on what it scraped.
        with Prometheus(tmp_path / "prometheus", f"127.0.0.1:{server.port}") as prometheus:

            def counted() -> bool:
                found = prometheus.query("sum(aigos_policy_checks_total)")
                return bool(found) and float(found[0]["value"][1]) == checks

            prometheus.until(counted, f"saw {checks} checks")
            prometheus.until(
                lambda: all(rule.get("lastEvaluation", "").startswith("20") for rule in prometheus.rules()),
                "evaluated every rule",
            )
            rules = prometheus.rules()
            assert len(rules) >= 13
            assert {rule["health"] for rule in rules} == {"ok"}, rules
            # Nothing is wrong with this replica, so nothing fires.
            assert not [rule["name"] for rule in rules if rule["state"] == "firing"]
    assert len(TOKEN.findall(server.output())) == 1


def _open_files_limit(pid: int) -> int:
    """The soft open-file limit of process ``pid`` (Linux)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-file limit for {pid}")


def _sockets(port: int, state: str) -> set[str]:
    """The inodes of the IPv4 TCP sockets on local ``port`` in ``state`` (01 established, 0A listening)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == state and int(fields[1].split(":")[1], 16) == port:
            found.add(f"socket:[{fields[9]}]")
    return found


def _connection_owners(server_pid: int, port: int) -> Counter[int]:
    """How many established connections to ``port`` each child process of ``server_pid`` holds (Linux)."""
    inodes = _sockets(port, "01")
    owners: Counter[int] = Counter()
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    for child in map(int, children):
        for fd in Path(f"/proc/{child}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    owners[child] += 1
            except OSError:
                continue  # closed meanwhile
    return owners


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; SO_REUSEPORT balancing is Linux's"
)
def test_connections_spread_over_the_workers(tmp_path: Path, replica_env: dict[str, str]) -> None:
    # A burst of connections, as a pool of agents opens them, all waiting before any worker accepts: with
    # one socket shared by the workers, the first to wake takes them all.
    env = {key: value for key, value in replica_env.items() if key != "AIGOS_BOOTSTRAP_ADMIN_TOKEN"}
    with ServerProcess(tmp_path, env, args=["--workers", "2"]) as server:
        assert server.process is not None
        pid = server.process.pid
        deadline = time.monotonic() + 30
        while len(_sockets(server.port, "0A")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # /health answers once the first worker is up; the second may still be starting
        workers = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        for worker in workers:
            os.kill(worker, signal.SIGSTOP)
        try:
            burst = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(16)]
        finally:
            # One worker first, with time to accept all it can, then the other.
            for worker in workers:
                os.kill(worker, signal.SIGCONT)
                time.sleep(0.5)
        try:
            for connection in burst:
                connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert connection.recv(4096).startswith(b"HTTP/1.1 200")
            owners = _connection_owners(pid, server.port)
        finally:
            for connection in burst:
                connection.close()
    assert sum(owners.values()) == 16
    assert len(owners) == 2


def _access_client(server: ServerProcess, request_id: str) -> str:
    """The client address the access log recorded for ``request_id``."""
    import json

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in server.output().splitlines():
            if line.startswith("{") and json.loads(line).get("request_id") == request_id:
                client: str = json.loads(line)["client"]
                return client
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


@pytest.mark.parametrize(
    ("env", "args", "seen"),
    [
        ({}, [], "127.0.0.1"),
        ({"AIGOS_FORWARDED_ALLOW_IPS": "127.0.0.1"}, [], "203.0.113.9"),
        ({"AIGOS_FORWARDED_ALLOW_IPS": "127.0.0.1"}, ["--forwarded-allow-ips", "10.0.0.0/8"], "127.0.0.1"),
        ({}, ["--forwarded-allow-ips", "127.0.0.1"], "203.0.113.9"),
    ],
    ids=["default-trusts-none", "setting", "option-overrides-setting", "option"],
)
def test_forwarding_headers_are_trusted_only_from_configured_proxies(
    tmp_path: Path, env: dict[str, str], args: list[str], seen: str
) -> None:
    # A process on the same host spoofs its address: only a configured proxy may name the client.
    with ServerProcess(tmp_path, {"AIGOS_LOG_FORMAT": "json", **env}, args=args) as server:
        headers = {"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "forwarded-1"}
        assert httpx.get(server.base_url + "/v1/info", headers=headers).status_code == 200
        assert _access_client(server, "forwarded-1") == seen


def _closed_while_trickling(port: int, start: bytes, trickle: bytes, within: float) -> tuple[bool, bytes]:
    """Send ``start``, then ``trickle`` one byte every 0.2 s; whether the server closed the connection within
    ``within`` seconds, and what it answered."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(0.2)
        sock.sendall(start)
        deadline = time.monotonic() + within
        for byte in trickle:
            if time.monotonic() > deadline:
                return False, answer
            try:
                sock.sendall(bytes([byte]))
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # reset: closed
                return True, answer
            if not chunk:
                return True, answer
            answer += chunk
    return False, answer


def test_slow_request_heads_and_bodies_are_cut_off(tmp_path: Path) -> None:
    env = {"AIGOS_REQUEST_HEAD_TIMEOUT_SECONDS": "1", "AIGOS_REQUEST_BODY_TIMEOUT_SECONDS": "1"}
    with ServerProcess(tmp_path, env) as server:
        # Headers one byte at a time: closed with a 408 (generous bound: the deadline is 1 s).
        closed, answer = _closed_while_trickling(
            server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 200, within=20
        )
        assert closed
        assert answer.startswith(b"HTTP/1.1 408")
        # A body one byte at a time: closed.
        head = (
            b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        )
        closed, _ = _closed_while_trickling(server.port, head, b" " * 500, within=20)
        assert closed
        # A connection that sends nothing at all is closed too.
        with socket.create_connection(("127.0.0.1", server.port)) as idle:
            idle.settimeout(20)
            assert idle.recv(4096).startswith(b"HTTP/1.1 408")

        # Normal requests are untouched, also on a connection kept alive longer than the head deadline.
        with httpx.Client(base_url=server.base_url) as client:
            assert client.get("/health").status_code == 200
            time.sleep(1.5)
            assert client.get("/health").status_code == 200
            created = client.post("/v1/tenants", json={"name": "x"})
            assert created.status_code != 408
