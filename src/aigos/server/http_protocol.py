"""Read deadlines for the request head and body: uvicorn's HTTP protocols with two timers added.

uvicorn closes an idle keep-alive connection, but not one that sends its request slowly: headers or a body
one byte every two seconds keep a connection (and its memory) for as long as the client likes, and a few
thousand such clients exhaust a replica. Here a request's head must be complete within
``AIGOS_REQUEST_HEAD_TIMEOUT_SECONDS`` of the connection opening (or of its first byte, on a kept-alive
connection), and its body within ``AIGOS_REQUEST_BODY_TIMEOUT_SECONDS`` of the head; otherwise the
connection is closed (with a 408 when no response has started). A response that takes long, such as the
kill-switch stream, is not limited: only what the client sends is.

The protocols also let a long response take its connection over (``DETACH``, a scope extension): the
kill-switch stream sends its head and first frames through ASGI as usual, then keeps only the transport
and writes its chunks to it directly. The request's task, the middleware frames, the scope and the
parser are released: an open stream costs a few kilobytes instead of a whole ASGI call held open. A
server without these protocols offers no extension, and the stream stays an ordinary ASGI response.

``aigos serve`` passes ``protocol_path()`` as uvicorn's ``http``; the deadlines are read from the settings
once per process (a worker process reads the same environment as the one that started it).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Literal, Protocol

import h11
import structlog
from h11._writers import ChunkedWriter
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger("aigos.server")

Stage = Literal["head", "body"]
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
#: The scope extension (``scope["extensions"][DETACH]``) by which a response takes its connection over.
DETACH = "aigos.detach"


class Detach(Protocol):
    """Hand the connection to the response: from now on it writes HTTP/1.1 chunks to the returned
    transport itself and ends them (``0\\r\\n\\r\\n``) and the connection when it is done; ``lost`` is
    called once if the connection goes first. None when the connection cannot be handed over (the head
    was not written yet, the body is not chunked, the client left): the response ends as usual then."""

    def __call__(self, lost: Callable[[], None]) -> asyncio.Transport | None: ...


@functools.cache
def deadlines() -> tuple[float, float]:
    """The head and body deadlines of this process, in seconds."""
    from aigos.server.config import Settings

    settings = Settings()
    return settings.request_head_timeout_seconds, settings.request_body_timeout_seconds


class RequestDeadlines:
    """One timer per connection, armed for the stage the request is in (head or body)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    cycle: Any

    _deadline: asyncio.TimerHandle | None = None
    _stage: Stage | None = None

    def _arm(self, stage: Stage) -> None:
        """Start ``stage``'s deadline unless it already runs (it counts from the stage's start)."""
        if self._stage == stage:
            return
        self._disarm()
        head, body = deadlines()
        self._stage = stage
        self._deadline = self.loop.call_later(head if stage == "head" else body, self._expire, stage)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._stage = None, None

    def _expire(self, stage: Stage) -> None:
        self._deadline, self._stage = None, None
        if self.transport.is_closing():
            return
        log.warning("request_deadline_exceeded", stage=stage, client=self.client[0] if self.client else None)
        # A response under way (a pipelined earlier request's, or the app answering before the body is
        # complete) must not be interleaved with ours: then the connection is only closed.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


class Handover(RequestDeadlines):
    """The ``DETACH`` extension: offered to each request, taken by at most one response."""

    _lost: Callable[[], None] | None = None

    @property
    def detached(self) -> bool:
        """Whether a response has taken the connection over."""
        return self._lost is not None

    def _offer(self) -> None:
        """Put ``DETACH`` in the scope of the request just parsed (before its task first runs)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.scope.setdefault("extensions", {})[DETACH] = self._detach

    def _detach(self, lost: Callable[[], None]) -> asyncio.Transport | None:
        cycle = self.cycle
        if (
            self._lost is not None
            or cycle is None
            or self.transport.is_closing()
            or not cycle.response_started
            or cycle.response_complete
            or not self._chunked()
        ):
            return None
        # uvicorn's cycle takes the response as complete, so the ASGI call may return while the body goes
        # on; no keep-alive timer is armed (that happens only when a response really completes).
        cycle.response_complete = True
        self._lost = lost
        self._disarm()
        self._release()
        return self.transport

    def _chunked(self) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        """Drop what only the request's parsing needed."""

    def _detached_data(self) -> None:
        # A stream's client sends nothing after its request; anything more would be parsed as a pipelined
        # request whose answer would interleave with the stream's chunks.
        self.transport.close()

    def _detached_lost(self) -> None:
        lost, self._lost = self._lost, (lambda: None)
        if lost is not None:
            lost()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn: h11 serves alone then
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


if HttpToolsProtocol is not None:

    class DeadlineHttpToolsProtocol(Handover, HttpToolsProtocol):
        """uvicorn's httptools protocol with read deadlines (its parser calls back at each stage) and the
        ``DETACH`` extension."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm("head")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.detached:
                self._detached_lost()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.detached:
                self._detached_data()
            else:
                super().data_received(data)

        def shutdown(self) -> None:
            if self.detached:
                self.transport.close()
            else:
                super().shutdown()

        def _chunked(self) -> bool:
            return bool(self.cycle.chunked_encoding)

        def _release(self) -> None:
            # The parser, the scope (with its headers) and the cycle are no longer needed: the transport
            # and this object are all an open stream keeps. connection_lost copes with a None cycle.
            self.cycle = None
            self.scope = None  # type: ignore[assignment]
            self.headers = None  # type: ignore[assignment]
            self.parser = None  # type: ignore[assignment]
            self.pipeline = None  # type: ignore[assignment]

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm("head")

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            self._offer()
            self._arm("body")

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()


class DeadlineH11Protocol(Handover, H11Protocol):
    """uvicorn's h11 protocol with read deadlines (the stage is read from h11's state after each read) and
    the ``DETACH`` extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.detached:
            self._detached_lost()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.detached:
            self.transport.close()
        else:
            super().shutdown()

    def _chunked(self) -> bool:
        # h11 frames the body itself: chunked unless the head had a length or the client speaks HTTP/1.0.
        return isinstance(self.conn._writer, ChunkedWriter)

    def data_received(self, data: bytes) -> None:
        if self.detached:
            self._detached_data()
            return
        super().data_received(data)
        self._offer()
        state = self.conn.their_state
        if state is h11.IDLE:
            self._arm("head")  # bytes arrived, but not a whole head yet
        elif state is h11.SEND_BODY:
            self._arm("body")
        else:
            self._disarm()


def protocol_path() -> str:
    """The import path of the protocol for uvicorn's ``http`` option: httptools when installed, else h11."""
    name = "DeadlineHttpToolsProtocol" if HttpToolsProtocol is not None else "DeadlineH11Protocol"
    return f"{__name__}:{name}"
