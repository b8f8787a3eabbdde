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

from tests.server_process import ServerProcess

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
        time.sleep(0.2)
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    entry = next(line for line in lines if line.get("request_id") == "log-check-1")
    assert entry["event"] == "request"
    assert entry["method"] == "GET"
    assert entry["path"] == "/v1/info"
    assert entry["status"] == 200
    assert isinstance(entry["latency_ms"], float)


def test_two_workers_on_postgres_and_redis(tmp_path: Path, replica_env: dict[str, str]) -> None:
    env = {key: value for key, value in replica_env.items() if key != "AIGOS_BOOTSTRAP_ADMIN_TOKEN"}
    with ServerProcess(tmp_path, env, args=["--workers", "2"]) as server:
        body = httpx.get(server.base_url + "/v1/info").json()
        assert body["backends"] == {"database": "postgresql", "bus": "redis", "embedded": False}
        assert httpx.get(server.base_url + "/health/ready").status_code == 200
    assert len(TOKEN.findall(server.output())) == 1


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
