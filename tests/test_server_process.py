"""The real server process: first start prints the bootstrap token once, SIGTERM exits cleanly."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

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
