"""The telemetry view on both backends: the event log listed and followed live over Server-Sent Events,
filtered, resumable with ``Last-Event-ID``, one tenant's only, ended by the server's stop."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from aigos.server.app import create_app
from aigos.server.telemetry import follow
from tests.audit.helpers import proxied_settings
from tests.helpers import TenantHandle
from tests.killswitch.helpers import Live
from tests.killswitch.sse import Event, SseStream
from tests.live import serving
from tests.tcp_proxy import TcpProxy

STREAM = "/v1/telemetry/events/stream"


@contextlib.asynccontextmanager
async def following(
    live: Live, owner: TenantHandle, params: dict[str, Any] | None = None, last_event_id: int | None = None
) -> AsyncIterator[SseStream]:
    """An open telemetry stream, once the server said it follows."""
    headers = dict(owner.headers)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    timeout = httpx.Timeout(10.0, read=30.0)
    async with live.http.stream("GET", STREAM, params=params, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = SseStream(response)
        await stream.wait_comment("following")
        yield stream


async def report(live: Live, agent: dict[str, Any], *names: str) -> None:
    """The agent reports one event of each type in ``names``."""
    events = [{"event_type": name, "data": {"n": n}} for n, name in enumerate(names)]
    response = await live.http.post(
        "/v1/telemetry",
        json={"events": events},
        headers={"Authorization": f"Bearer {agent['identity_token']}"},
    )
    assert response.status_code == 202, response.text


async def read(stream: SseStream, count: int) -> list[Event]:
    found = []
    for _ in range(count):
        event = await stream.next(within=10.0)
        assert event is not None, "the stream ended"
        found.append(event)
    return found


async def test_a_follower_gets_what_is_appended_in_order_and_resumes_after_last_event_id(live: Live) -> None:
    owner = await live.tenant()
    async with following(live, owner) as stream:
        agent = await live.agent(owner, "bot")
        await report(live, agent, "tool.called", "tool.completed", "llm.call")
        events = await read(stream, 4)
    assert [e.event for e in events] == ["agent.registered", "tool.called", "tool.completed", "llm.call"]
    seqs = [int(str(e.id)) for e in events]
    assert seqs == sorted(set(seqs))
    assert [e.json["seq"] for e in events] == seqs
    assert (events[1].json["source"], events[1].json["agent_id"]) == ("agent", agent["agent_id"])

    # Reconnecting after the second: the rest, nothing skipped, nothing twice.
    async with following(live, owner, last_event_id=seqs[1]) as again:
        assert [e.id for e in await read(again, 2)] == [str(s) for s in seqs[2:]]
    async with following(live, owner, params={"after": seqs[2]}) as again:
        assert [e.id for e in await read(again, 1)] == [str(seqs[3])]
    # A client that went gave its place back.
    for _ in range(100):
        if uuid.UUID(owner.id) not in follow._following:
            break
        await asyncio.sleep(0.05)
    assert uuid.UUID(owner.id) not in follow._following


async def test_a_follower_sees_only_its_filter_and_its_tenant(live: Live) -> None:
    owner, other = await live.tenant(), await live.tenant("Other")
    agent, theirs = await live.agent(owner, "bot"), await live.agent(other, "bot")
    bystander = await live.agent(owner, "bystander")
    async with following(
        live, owner, params={"event_type": "tool.*", "agent_id": agent["agent_id"]}
    ) as stream:
        await report(live, theirs, "tool.called")
        await report(live, bystander, "tool.called")
        await report(live, agent, "llm.call", "tool.completed")
        (event,) = await read(stream, 1)
    assert (event.event, event.json["agent_id"], event.json["tenant_id"]) == (
        "tool.completed",
        agent["agent_id"],
        owner.id,
    )

    listed = await live.http.get(
        "/v1/telemetry/events", params={"event_type": "tool.*", "source": "agent"}, headers=owner.headers
    )
    assert listed.status_code == 200, listed.text
    assert {(e["event_type"], e["agent_id"]) for e in listed.json()["data"]} == {
        ("tool.completed", agent["agent_id"]),
        ("tool.called", bystander["agent_id"]),
    }
    # An agent's token reads nothing here: the view is for the tenant's people and keys.
    refused = await live.http.get(
        "/v1/telemetry/events", headers={"Authorization": f"Bearer {agent['identity_token']}"}
    )
    assert refused.status_code == 401


async def test_streams_per_tenant_are_bounded_and_end_when_the_server_stops(live: Live) -> None:
    owner = await live.tenant()
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(following(live, owner)) for _ in range(follow.MAX_PER_TENANT)
        ]
        refused = await live.http.get(STREAM, headers=owner.headers)
        assert refused.status_code == 429
        assert refused.json()["code"] == "TOO_MANY_STREAMS"
        live.app.state.runtime.shutdown.close()
        for stream in streams:
            assert await stream.next(within=5.0) is None


async def test_a_stream_ends_when_the_database_goes_and_is_refused_until_it_is_back(
    tmp_path: Path, pg_database: str, redis_prefix: str, pg_proxy: TcpProxy
) -> None:
    app = create_app(proxied_settings(tmp_path, pg_database, redis_prefix, pg_proxy))
    async with serving(app) as live:
        owner = await live.tenant()
        async with following(live, owner) as stream:
            pg_proxy.sever()
            # Ended, not failed: the client reconnects with Last-Event-ID.
            assert await stream.next(within=15.0) is None
        refused = await live.http.get(STREAM, headers=owner.headers)
        assert refused.status_code == 503, refused.text
        pg_proxy.restore()
