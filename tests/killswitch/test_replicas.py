"""Two real server processes on one PostgreSQL and one Redis: a trigger on one reaches streams on the other,
even when the other lost Redis meanwhile (it catches up from the database); SIGTERM ends open streams."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from aigos.core.commands import ReplayGuard, SignedCommand, verify_command
from aigos.core.signing import unb64url
from tests.helpers import signup
from tests.killswitch.sse import SseClient, SseStream
from tests.server_process import ServerProcess
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow


async def signed_up(http: httpx.AsyncClient) -> dict[str, str]:
    return (await signup(http, "Fleet")).headers


async def next_command(
    stream: SseStream, keys: dict[str, bytes], agent: dict[str, Any], within: float
) -> SignedCommand:
    event = await stream.next(within=within)
    assert event is not None, "the stream ended"
    command = SignedCommand.from_json(event.json)
    verify_command(keys, command, agent_id=agent["agent_id"])
    return command


async def test_trigger_on_one_process_reaches_a_stream_on_the_other(
    tmp_path: Path, replica_env: dict[str, str]
) -> None:
    redis = urlsplit(replica_env["AIGOS_REDIS_URL"])
    proxy = await TcpProxy(redis.hostname or "127.0.0.1", redis.port or 6379).start()
    env = {**replica_env, "AIGOS_ISSUER": "https://aigos.example.com"}
    cut_off_env = {**env, "AIGOS_REDIS_URL": f"redis://127.0.0.1:{proxy.port}{redis.path}"}
    one = ServerProcess(tmp_path / "one", env)
    two = ServerProcess(tmp_path / "two", cut_off_env)
    try:
        # Started from threads: process two reaches Redis through the proxy, which runs in this loop.
        await asyncio.to_thread(one.start)
        await asyncio.to_thread(two.start)
        async with (
            httpx.AsyncClient(base_url=one.base_url, timeout=10) as http_one,
            httpx.AsyncClient(base_url=two.base_url, timeout=10) as http_two,
        ):
            owner = await signed_up(http_one)
            registered = await http_one.post("/v1/agents/register", json={"name": "far"}, headers=owner)
            assert registered.status_code == 201, registered.text
            agent = registered.json()
            keys_two = (await http_two.get("/v1/kill-switch/keys")).json()["keys"]
            keys = {key["key_id"]: unb64url(key["public_key"]) for key in keys_two}
            guard = ReplayGuard()
            sse = SseClient(http_two)
            try:
                stream = await sse.open(agent["identity_token"])
                # Live across processes, through Redis pub/sub.
                paused = await http_one.post(
                    "/v1/kill-switch/trigger",
                    json={"agent_id": agent["agent_id"], "command": "PAUSE", "reason": "cross"},
                    headers=owner,
                )
                assert paused.status_code == 201, paused.text
                command = await next_command(stream, keys, agent, within=5)
                guard.check(command)
                guard.accept(command)
                assert (command.command, command.sequence) == ("PAUSE", 1)

                # Process two loses Redis; the RESUME published meanwhile never reaches it through the bus.
                proxy.sever()
                await asyncio.sleep(0.3)
                resumed = await http_one.post(
                    "/v1/kill-switch/trigger",
                    json={"agent_id": agent["agent_id"], "command": "RESUME", "reason": "back"},
                    headers=owner,
                )
                assert resumed.status_code == 201, resumed.text
                await asyncio.sleep(0.5)
                proxy.restore()
                # Once reconnected, process two reads what it missed from the database.
                command = await next_command(stream, keys, agent, within=20)
                guard.check(command)
                assert (command.command, command.sequence) == ("RESUME", 2)

                # SIGTERM with an open stream: the stream ends and the process exits 0, promptly.
                started = time.monotonic()
                code = await asyncio.to_thread(two.terminate, 10.0)
                assert code == 0, two.output()
                assert time.monotonic() - started < 8, two.output()
                assert await stream.next(within=5) is None
            finally:
                await sse.aclose()
    finally:
        for server in (two, one):
            await asyncio.to_thread(server.__exit__, None, None, None)
        await proxy.stop()
