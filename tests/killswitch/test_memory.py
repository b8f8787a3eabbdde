"""What an open kill-switch stream costs the server: a bound on the Python memory each one holds.

A fleet keeps one stream per agent open for hours, so the per-stream cost decides how many agents a replica
can hold. The streams here are opened with bare non-blocking sockets, so the client's own share of what is
measured is a socket object per stream (counted against the bound all the same).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
from urllib.parse import urlsplit

import pytest

from aigos.server.config import Settings
from tests.killswitch.helpers import Live

#: The target is at most 20 KB of resident memory per stream; Python's share is what is bounded here.
MAX_BYTES_PER_STREAM = 20 * 1024
STREAMS = 200


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """One agent may hold every stream of the test (the bound is per agent and per replica)."""
    settings.killswitch_max_streams_per_agent = 1_000
    return settings


async def open_stream(host: str, port: int, token: str) -> socket.socket:
    """A stream opened over a bare socket, once its ``opened`` event arrived."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    request = (
        f"GET /v1/kill-switch/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    received = b""
    while b"event: opened" not in received:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200 "), received
    return sock


async def test_an_open_stream_holds_a_few_kilobytes(live: Live) -> None:
    owner = await live.tenant()
    agent = await live.agent(owner, "worker")
    url = urlsplit(str(live.http.base_url))
    assert url.hostname is not None
    assert url.port is not None
    sockets = [await open_stream(url.hostname, url.port, agent["identity_token"]) for _ in range(10)]
    try:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(STREAMS):
                sockets.append(await open_stream(url.hostname, url.port, agent["identity_token"]))
            await asyncio.sleep(0.2)  # the requests' tasks finish once their connections are handed over
            gc.collect()
            per_stream = (tracemalloc.get_traced_memory()[0] - before) / STREAMS
        finally:
            tracemalloc.stop()
        assert per_stream < MAX_BYTES_PER_STREAM, f"{per_stream:.0f} bytes per open stream"
        assert live.app.state.runtime.killswitch.connection_count == STREAMS + 10
    finally:
        for sock in sockets:
            sock.close()
