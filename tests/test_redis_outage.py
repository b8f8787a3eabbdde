"""Redis cut for two real replicas (PostgreSQL + Redis, Redis behind a proxy both reach it through).

What a user notices: API-key routes keep answering (a per-process limiter stands in for the shared one),
nothing answers 500, what was acknowledged is there afterwards, and the kill switch still stops agents
streaming from either replica (the trigger is committed and reaches the other replica through PostgreSQL
``LISTEN/NOTIFY``). Once Redis is back, delivery through the bus resumes and no stream repeats a sequence.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager

from aigos.core.commands import SignedCommand, verify_command
from aigos.core.signing import unb64url
from aigos.server.app import create_app
from tests.conftest import REDIS_URL, embedded_settings, pg_url
from tests.helpers import TenantHandle, prometheus_samples, signup
from tests.identity.helpers import SigningClient
from tests.killswitch.sse import SseClient, SseStream
from tests.server_process import ServerProcess
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

#: Generous bounds for things that should take milliseconds: tests count outcomes, they never time them.
PATIENCE = 15.0


@dataclass
class Fleet:
    """Two replicas sharing one database and one Redis, each reaching Redis through its own proxy."""

    proxies: tuple[TcpProxy, TcpProxy]
    one: httpx.AsyncClient
    two: httpx.AsyncClient
    owner: TenantHandle
    keys: dict[str, bytes]

    def sever(self) -> None:
        """Cut both replicas off Redis."""
        for proxy in self.proxies:
            proxy.sever()

    def restore(self) -> None:
        """Let both replicas reach Redis again."""
        for proxy in self.proxies:
            proxy.restore()

    async def agent(self, name: str) -> dict[str, Any]:
        """A registered agent (with its identity token)."""
        response = await self.one.post("/v1/agents/register", json={"name": name}, headers=self.owner.headers)
        assert response.status_code == 201, response.text
        agent: dict[str, Any] = response.json()
        return agent

    async def trigger(self, via: httpx.AsyncClient, agent: dict[str, Any], command: str) -> httpx.Response:
        """``POST /v1/kill-switch/trigger`` for one agent."""
        body = {"agent_id": agent["agent_id"], "command": command, "reason": "outage drill"}
        return await via.post("/v1/kill-switch/trigger", json=body, headers=self.owner.headers)

    async def command(self, stream: SseStream, agent: dict[str, Any]) -> SignedCommand:
        """The next command on ``stream``, verified."""
        event = await stream.next(within=PATIENCE)
        assert event is not None, "the stream ended"
        command = SignedCommand.from_json(event.json)
        verify_command(self.keys, command, agent_id=agent["agent_id"])
        return command


async def until_replicas(client: httpx.AsyncClient, count: int) -> None:
    """Wait until the server counts ``count`` replicas sharing its database (``aigos_replicas``)."""
    for _ in range(200):
        if prometheus_samples((await client.get("/metrics")).text).get("aigos_replicas") == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{client.base_url} never counted {count} replicas")


@pytest.fixture
async def fleet(tmp_path: Path, replica_env: dict[str, str]) -> AsyncIterator[Fleet]:
    """Two ``aigos serve`` processes whose Redis can be cut (``fleet.sever()``) and restored."""
    redis = urlsplit(replica_env["AIGOS_REDIS_URL"])
    proxies = (
        await TcpProxy(redis.hostname or "127.0.0.1", redis.port or 6379).start(),
        await TcpProxy(redis.hostname or "127.0.0.1", redis.port or 6379).start(),
    )
    servers = [
        ServerProcess(
            tmp_path / name, {**replica_env, "AIGOS_REDIS_URL": f"redis://127.0.0.1:{proxy.port}{redis.path}"}
        )
        for name, proxy in zip(("one", "two"), proxies, strict=True)
    ]
    try:
        # Started from threads: the servers reach Redis through the proxies, which run in this loop.
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        async with (
            httpx.AsyncClient(base_url=servers[0].base_url, timeout=PATIENCE) as one,
            httpx.AsyncClient(base_url=servers[1].base_url, timeout=PATIENCE) as two,
        ):
            # Each replica divides its rate limits by the others it counts while Redis is down: count first.
            for client in (one, two):
                await until_replicas(client, 2)
            owner = await signup(one, "Outage")
            published = (await two.get("/v1/kill-switch/keys")).json()["keys"]
            keys = {key["key_id"]: unb64url(key["public_key"]) for key in published}
            yield Fleet(proxies, one, two, owner, keys)
    finally:
        for server in reversed(servers):
            await asyncio.to_thread(server.__exit__, None, None, None)
        for proxy in proxies:
            await proxy.stop()


async def test_api_key_routes_answer_while_redis_is_down(fleet: Fleet) -> None:
    agents = [await fleet.agent(f"before-{n}") for n in range(2)]
    headers = fleet.owner.headers
    fleet.sever()
    statuses: Counter[int] = Counter()
    problems: Counter[str] = Counter()
    created: list[str] = []

    def count(answer: httpx.Response) -> httpx.Response:
        statuses[answer.status_code] += 1
        if answer.status_code >= 400:
            problems[answer.json().get("code", "?")] += 1
        return answer

    # 20 requests on each replica, reads and writes: within the key's 60 a minute, even divided by two.
    for round_ in range(5):
        for http in (fleet.one, fleet.two):
            count(await http.get("/v1/agents", headers=headers))
            count(await http.get(f"/v1/agents/{agents[round_ % 2]['agent_id']}", headers=headers))
            count(await http.get("/v1/kill-switch/commands", headers=headers))
            if round_ < 3:
                answer = count(
                    await http.post("/v1/agents", json={"name": f"during-{round_}"}, headers=headers)
                )
                if answer.status_code == 201:
                    created.append(answer.json()["id"])
            else:
                count(await http.get("/v1/audit/events", headers=headers))
    assert statuses[500] == 0, (statuses, problems)
    assert statuses[429] == 0, (statuses, problems)
    assert len(created) == 6, (statuses, problems)

    # The limit still holds, per process: each of the two replicas admits its half of 60 a minute.
    admitted_by_one = 20
    refused = None
    for _ in range(60):
        answer = count(await fleet.one.get("/v1/agents", headers=headers))
        if answer.status_code == 429:
            refused = answer
            break
        admitted_by_one += 1
    assert refused is not None, statuses
    assert int(refused.headers["Retry-After"]) >= 1
    # 30 at once, and what the bucket refills (one every 2 s) while the requests are made: on a loaded
    # machine that can be several, but never the whole key's 60.
    assert 30 <= admitted_by_one < 60, admitted_by_one
    assert statuses[500] == 0, (statuses, problems)

    fleet.restore()
    # Acknowledged means kept: every agent created during the outage is there, on either replica.
    for agent_id in created:
        found = await fleet.two.get(f"/v1/agents/{agent_id}", headers=headers)
        assert found.status_code == 200, found.text


async def test_kill_switch_reaches_both_replicas_while_redis_is_down(fleet: Fleet) -> None:
    far, near, paused = [await fleet.agent(name) for name in ("far", "near", "paused")]
    sse_one, sse_two = SseClient(fleet.one), SseClient(fleet.two)
    try:
        far_stream = await sse_two.open(far["identity_token"])
        near_stream = await sse_one.open(near["identity_token"])
        paused_stream = await sse_two.open(paused["identity_token"])
        fleet.sever()

        # Triggered on replica one: the agent streaming from replica two hears it, and so does the one here.
        started = time.monotonic()
        answer = await fleet.trigger(fleet.one, far, "TERMINATE")
        assert answer.status_code == 201, answer.text
        command = await fleet.command(far_stream, far)
        print(f"\nTERMINATE across replicas without Redis: {time.monotonic() - started:.3f} s")
        assert (command.command, command.sequence) == ("TERMINATE", 1)
        answer = await fleet.trigger(fleet.one, near, "TERMINATE")
        assert answer.status_code == 201, answer.text
        assert (await fleet.command(near_stream, near)).command == "TERMINATE"
        answer = await fleet.trigger(fleet.one, paused, "PAUSE")
        assert answer.status_code == 201, answer.text
        assert (await fleet.command(paused_stream, paused)).sequence == 1
        # Both streams end after a TERMINATE.
        assert await far_stream.next(within=PATIENCE) is None
        assert await near_stream.next(within=PATIENCE) is None

        # Redis is back: replica two resynchronises (reading PAUSE again, which its stream already sent)
        # and the next command travels through the bus as before.
        fleet.restore()
        await until_ready(fleet.two)
        await until_ready(fleet.one)
        answer = await fleet.trigger(fleet.one, paused, "RESUME")
        assert answer.status_code == 201, answer.text
        command = await fleet.command(paused_stream, paused)
        assert (command.command, command.sequence) == ("RESUME", 2)
        # Nothing else follows: no sequence is sent twice.
        with pytest.raises(TimeoutError):
            await paused_stream.next(within=1.5)
    finally:
        fleet.restore()
        await sse_one.aclose()
        await sse_two.aclose()


async def until_ready(http: httpx.AsyncClient) -> None:
    """Wait until the replica says it is ready again (its bus connection is back)."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        answer = await http.get("/health/ready")
        if answer.status_code == 200 and answer.json()["status"] == "ready":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the replica did not become ready again")


async def test_a_replica_that_lost_redis_still_stops_an_agent_on_the_other(fleet: Fleet) -> None:
    agent = await fleet.agent("elsewhere")
    beat = f"/v1/agents/{agent['agent_id']}/heartbeat"
    token = {"Authorization": f"Bearer {agent['identity_token']}"}
    assert (await fleet.two.post(beat, headers=token)).status_code == 200
    sse = SseClient(fleet.two)
    try:
        stream = await sse.open(agent["identity_token"])
        # Only replica one loses Redis: its bus announcements are lost, and replica two, whose own bus
        # connection never broke, has no reason to resynchronise.
        fleet.proxies[0].sever()
        answer = await fleet.trigger(fleet.one, agent, "TERMINATE")
        assert answer.status_code == 201, answer.text
        assert (await fleet.command(stream, agent)).command == "TERMINATE"
        # Replica two heard the new status along with the command: the agent is refused there too.
        refused = await fleet.two.post(beat, headers=token)
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == "AGENT_TERMINATED"
    finally:
        fleet.restore()
        await sse.aclose()


async def test_what_cannot_do_without_redis_answers_503_naming_it(
    tmp_path: Path, pg_database: str, redis_prefix: str
) -> None:
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    settings = embedded_settings(
        tmp_path,
        database_url=pg_url(pg_database),
        redis_url=f"redis://127.0.0.1:{proxy.port}{target.path}",
        redis_prefix=redis_prefix,
    )
    app = create_app(settings)
    try:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://testserver"
            ) as http,
        ):
            owner = await signup(http, "Strict")
            spec = {"name": "signer"}
            registered = await http.post("/v1/agents/register", json=spec, headers=owner.headers)
            assert registered.status_code == 201, registered.text
            signer = SigningClient(registered.json()["agent_id"])
            await signer.register_key(http, owner)
            agent_token = {"Authorization": f"Bearer {registered.json()['identity_token']}"}
            proxy.sever()
            # Policy checks fail closed: the replica cannot know what changed meanwhile.
            check = {"action": "read", "resource": "db://x"}
            refused = await http.post("/v1/policies/check", json=check, headers=agent_token)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"]
            # A client assertion is single-use across every replica, which only the bus can tell: refused,
            # as a 503 the client may retry, never a 500 and never accepted twice.
            answer = await http.post("/oauth2/token", data=signer.form())
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["retry-after"] == "1"
            body = answer.json()
            assert (body["code"], body["dependency"]) == ("BUS_UNAVAILABLE", "bus")
            assert "Redis" in body["detail"]
            proxy.restore()
            assert (await http.post("/oauth2/token", data=signer.form())).status_code == 200
    finally:
        await proxy.stop()
