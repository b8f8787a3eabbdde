"""How a stream is served: handed over to the hub (``aigos serve``'s protocols, httptools or h11) or as an
ordinary ASGI response (any other server), with the same frames either way; and one command written to
many streams of its agent, in the same bytes, across the hub's write slices."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI

from aigos.server.config import Settings
from aigos.server.http_protocol import DeadlineH11Protocol, DeadlineHttpToolsProtocol
from aigos.server.killswitch.hub import SLICE
from tests.killswitch.helpers import Live
from tests.live import serving

PROTOCOLS: dict[str, Any] = {
    "httptools": DeadlineHttpToolsProtocol,
    "h11": DeadlineH11Protocol,
    "plain": "httptools",  # uvicorn's own: no handover, the stream stays an ASGI response
}


@pytest.fixture(params=list(PROTOCOLS))
async def served(request: pytest.FixtureRequest, app: FastAPI, settings: Settings) -> AsyncIterator[Live]:
    """The test's app served by uvicorn with one of the HTTP protocols."""
    async with serving(app, PROTOCOLS[request.param]) as live:
        yield live


class RawStream:
    """A stream read over a bare socket: everything the server sent, as bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = b""

    @classmethod
    async def open(cls, live: Live, token: str) -> RawStream:
        """Connected, with the ``opened`` event read."""
        port = live.http.base_url.port
        assert port is not None
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = (
            f"GET /v1/kill-switch/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        stream = cls(sock)
        head = await stream.until(b"event: opened")
        assert head.startswith(b"HTTP/1.1 200 "), head
        return stream

    async def until(self, marker: bytes, within: float = 10.0) -> bytes:
        """Read until ``marker`` arrived; what arrived after it is kept for the next call."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while marker not in self.received:
                chunk = await loop.sock_recv(self.sock, 65536)
                assert chunk, f"the stream ended before {marker!r}: {self.received!r}"
                self.received += chunk
        before, _, after = self.received.partition(marker)
        self.received = after
        return before + marker

    async def frame(self) -> bytes:
        """The next kill-switch event, from its ``id`` line to its blank line (chunk framing left out)."""
        await self.until(b"event: kill-switch")
        data = await self.until(b"\n\n")
        return b"event: kill-switch" + data


async def until_forgotten(live: Live, expected: int) -> None:
    hub = live.app.state.runtime.killswitch
    for _ in range(200):
        if hub.connection_count == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{hub.connection_count} streams open, {expected} expected")


async def test_a_stream_delivers_and_is_forgotten_when_its_client_leaves(served: Live) -> None:
    owner = await served.tenant()
    agent = await served.agent(owner, "worker")
    stream = await RawStream.open(served, agent["identity_token"])
    try:
        response = await served.trigger(owner, agent=agent, command="PAUSE")
        assert response.status_code == 201, response.text
        frame = await stream.frame()
        assert b'"command":"PAUSE"' in frame
        assert served.app.state.runtime.killswitch.connection_count == 1
    finally:
        stream.sock.close()
    await until_forgotten(served, 0)


async def test_a_terminate_ends_the_stream(served: Live) -> None:
    owner = await served.tenant()
    agent = await served.agent(owner, "worker")
    stream = await RawStream.open(served, agent["identity_token"])
    try:
        response = await served.trigger(owner, agent=agent, command="TERMINATE")
        assert response.status_code == 201, response.text
        assert b'"command":"TERMINATE"' in await stream.frame()
        await stream.until(b"0\r\n\r\n")  # the chunked body's end
        await until_forgotten(served, 0)
    finally:
        stream.sock.close()


async def test_one_command_reaches_every_stream_of_its_agent_in_the_same_bytes(live: Live) -> None:
    live.app.state.runtime.killswitch.max_streams_per_agent = 1_000
    owner = await live.tenant()
    agent = await live.agent(owner, "worker")
    # More streams than one write slice: the command goes out over two turns of the event loop.
    streams = [await RawStream.open(live, agent["identity_token"]) for _ in range(SLICE + 10)]
    try:
        response = await live.trigger(owner, agent=agent, command="PAUSE")
        assert response.status_code == 201, response.text
        frames = await asyncio.gather(*(stream.frame() for stream in streams))
        assert len(set(frames)) == 1
    finally:
        for stream in streams:
            stream.sock.close()


async def test_a_fleet_command_reaches_open_streams_and_late_ones_get_it_with_their_ancestors(
    served: Live,
) -> None:
    owner = await served.tenant()
    root = await served.agent(owner, "root")
    child = await served.agent(owner, "child", parent=root)
    sibling = await served.agent(owner, "sibling", parent=root)
    other = await served.agent(owner, "other")
    open_child = await RawStream.open(served, child["identity_token"])
    open_other = await RawStream.open(served, other["identity_token"])
    late: RawStream | None = None
    try:
        paused = await served.trigger(owner, agent=root, command="PAUSE")
        assert paused.status_code == 201, paused.text
        fleet_id = paused.json()["command_id"].encode()
        assert b"event: kill-switch-fleet\n" in await open_child.until(fleet_id)
        # Outside the lineage: the other agent's next frame is its own command, not the fleet one.
        response = await served.trigger(owner, agent=other, command="PAUSE")
        assert response.status_code == 201, response.text
        frame = await open_other.frame()
        assert frame.startswith(b"event: kill-switch\n")
        assert fleet_id not in frame

        # Connected while the halt holds: the anchor names the root, the halt follows in the first frames.
        late = await RawStream.open(served, sibling["identity_token"])
        anchor = await late.until(b"\n\n")
        assert b'"ancestors":["' + root["agent_id"].encode() + b'"]' in anchor
        assert b"event: kill-switch-fleet\n" in await late.until(fleet_id)
        # Each stream got the fleet command once: it is recorded delivered to both agents.
        hub = served.app.state.runtime.killswitch
        for _ in range(100):
            await hub.flush()
            got = await served.http.get(
                f"/v1/kill-switch/fleet-commands/{fleet_id.decode()}", headers=owner.headers
            )
            assert got.status_code == 200, got.text
            if got.json()["delivered"] == 2:
                break
            await asyncio.sleep(0.1)
        assert got.json()["delivered"] == 2, got.json()
    finally:
        for stream in (open_child, open_other, late):
            if stream is not None:
                stream.sock.close()
    await until_forgotten(served, 0)


async def test_one_fleet_command_reaches_every_covered_stream_in_the_same_bytes(live: Live) -> None:
    live.app.state.runtime.killswitch.max_streams_per_agent = 1_000
    owner = await live.tenant()
    agent = await live.agent(owner, "worker")
    # More streams than one write slice: the fleet command goes out over two turns of the event loop.
    streams = [await RawStream.open(live, agent["identity_token"]) for _ in range(SLICE + 10)]
    try:
        response = await live.trigger(owner, all_agents=True, command="PAUSE")
        assert response.status_code == 201, response.text
        frames = await asyncio.gather(*(stream.frame() for stream in streams))
        assert len(set(frames)) == 1
        assert frames[0].startswith(b"event: kill-switch-fleet\n")
    finally:
        for stream in streams:
            stream.sock.close()
