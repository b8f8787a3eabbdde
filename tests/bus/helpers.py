"""Small async helpers shared by the bus tests."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

from aigos.server.bus import Message, Subscription

REDIS_URL = os.environ.get("AIGOS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: A safety net so a broken implementation fails the test instead of hanging it; never a timing assertion.
PATIENCE = 5.0


async def next_message(subscription: Subscription) -> Message:
    """The subscription's next item."""
    async with asyncio.timeout(PATIENCE):
        return await anext(subscription)


async def eventually(check: Callable[[], bool | Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds (effects that land asynchronously, such as an UNSUBSCRIBE)."""
    async with asyncio.timeout(PATIENCE):
        while True:
            outcome = check()
            if await outcome if inspect.isawaitable(outcome) else outcome:
                return
            await asyncio.sleep(0.01)


class StallingProxy:
    """A loopback TCP proxy to Redis that can stop moving bytes without closing anything.

    ``stall()`` mimics a dead network path (a crashed host, a silent firewall): the sockets stay open
    and nobody gets an error, so only a liveness probe can tell.
    """

    def __init__(self, target_url: str = REDIS_URL) -> None:
        parsed = urlsplit(target_url)
        self._target = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self._template = parsed
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The target URL with the proxy's address in place of the server's."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        userinfo = self._template.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
        return urlunsplit(self._template._replace(netloc=netloc))

    def stall(self) -> None:
        """Hold every byte from now on."""
        self._flowing.clear()

    def resume(self) -> None:
        """Deliver what was held and keep forwarding."""
        self._flowing.set()

    async def __aenter__(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        self._writers.add(server_writer)
        for source, sink in ((client_reader, server_writer), (server_reader, client_writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()
