"""Read deadlines for the request head and body: uvicorn's HTTP protocols with two timers added.

uvicorn closes an idle keep-alive connection, but not one that sends its request slowly: headers or a body
one byte every two seconds keep a connection (and its memory) for as long as the client likes, and a few
thousand such clients exhaust a replica. Here a request's head must be complete within
``AIGOS_REQUEST_HEAD_TIMEOUT_SECONDS`` of the connection opening (or of its first byte, on a kept-alive
connection), and its body within ``AIGOS_REQUEST_BODY_TIMEOUT_SECONDS`` of the head; otherwise the
connection is closed (with a 408 when no response has started). A response that takes long, such as the
kill-switch stream, is not limited: only what the client sends is.

``aigos serve`` passes ``protocol_path()`` as uvicorn's ``http``; the deadlines are read from the settings
once per process (a worker process reads the same environment as the one that started it).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Literal

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger("aigos.server")

Stage = Literal["head", "body"]
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


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


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn: h11 serves alone then
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


if HttpToolsProtocol is not None:

    class DeadlineHttpToolsProtocol(RequestDeadlines, HttpToolsProtocol):
        """uvicorn's httptools protocol with read deadlines (its parser calls back at each stage)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm("head")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm("head")

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            self._arm("body")

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()


class DeadlineH11Protocol(RequestDeadlines, H11Protocol):
    """uvicorn's h11 protocol with read deadlines (the stage is read from h11's state after each read)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
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
