"""A loopback TCP proxy a test can cut, slow down and restore, to fault PostgreSQL or Redis for one server.

Cutting closes every open connection and refuses new ones, as a stopped server or a broken network would,
without disturbing the real service other tests share. Slowing adds latency to every round trip (half on
the way there, half on the way back), as a distant or struggling server would, without limiting bandwidth:
each chunk is forwarded ``delay / 2`` seconds after it arrived, in order.
"""

from __future__ import annotations

import asyncio
import contextlib

#: Queued after a direction's last chunk: the peer closed its side.
_END = b""
#: One direction's chunks in arrival order, each with the loop time it arrived.
Chunks = asyncio.Queue[tuple[float, bytes]]


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` until cut; ``delay`` seconds slower per
    round trip once slowed."""

    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut = False
        self.delay = delay
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection."""
        self.disconnect_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    def sever(self) -> None:
        """Drop every connection and refuse new ones."""
        self.cut = True
        self.disconnect_all()

    def slow(self, delay: float) -> None:
        """Add ``delay`` seconds to every round trip from now on, open connections included."""
        self.delay = delay

    def restore(self) -> None:
        """Accept and forward connections again, without added delay."""
        self.cut = False
        self.delay = 0.0

    def disconnect_all(self) -> None:
        """Close every open connection (both directions)."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        # A handler cancelled as the loop closes must not end cancelled: Python 3.11's stream callback
        # would report that as an unhandled error.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Chunks go through a queue stamped with their arrival, so a delay adds latency, not a throttle.
        loop = asyncio.get_running_loop()
        chunks: Chunks = asyncio.Queue()
        forward = loop.create_task(self._forward(chunks, writer))
        self._tasks.add(forward)
        forward.add_done_callback(self._tasks.discard)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time(), data))
        chunks.put_nowait((loop.time(), _END))
        with contextlib.suppress(asyncio.CancelledError):
            await forward

    async def _forward(self, chunks: Chunks, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                arrived, data = await chunks.get()
                if data == _END:
                    break
                wait = arrived + self.delay / 2 - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)
