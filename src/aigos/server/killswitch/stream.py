"""The body of one kill-switch stream: the anchor, the backlog, then live commands, keep-alives, and the end.

A stream sends each sequence at most once, and each fleet command at most once (the backlog read from
the database and the live commands may overlap), and ends when the client goes away, after it sent a
TERMINATE (its own or a fleet one), when it fell too far behind, when a newer stream of the same agent
took its place (the per-agent bound), or when the server shuts down.

``StreamResponse`` sends the head and the first frames through ASGI, then, where the server offers it
(``http_protocol.DETACH``), hands the rest to the hub, which writes to the connection directly: the request's
task and everything it holds are released, so an open stream costs little more than its socket. Elsewhere
the response goes on as an ordinary streaming response (``events``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from aigos.core.commands import StreamAnchor
from aigos.server.http_protocol import DETACH, Detach
from aigos.server.killswitch.connection import (
    CLOSE,
    KEEPALIVE,
    TICK,
    Connection,
    FleetOutgoing,
    Outgoing,
)
from aigos.server.killswitch.hub import Hub

OPENED = b": connected\n\n"


def opened(anchor: StreamAnchor) -> bytes:
    """The first frames: a ``connected`` comment, then ``event: opened`` with the signed anchor (no ``id``,
    so an EventSource's ``Last-Event-ID`` is left alone)."""
    data = json.dumps(anchor.to_json(), separators=(",", ":"))
    return OPENED + f"event: opened\ndata: {data}\n\n".encode()


def first_frames(
    hub: Hub, connection: Connection, anchor: StreamAnchor, backlog: list[Outgoing | FleetOutgoing]
) -> tuple[bytes, bool]:
    """The opening frames and the backlog's (each sequence once, each fleet command once), and whether
    the stream ends there (a TERMINATE was among them)."""
    frames = [opened(anchor)]
    for item in backlog:
        if isinstance(item, FleetOutgoing):
            if connection.first_fleet(item):
                frames.append(item.frame)
                hub.fleet_delivered(connection, item)
                if item.command == "TERMINATE":
                    return b"".join(frames), True
            continue
        if item.sequence <= connection.sent:
            continue
        connection.sent = item.sequence
        frames.append(item.frame)
        hub.delivered(connection, item)
        if item.command == "TERMINATE":
            return b"".join(frames), True
    return b"".join(frames), False


async def events(
    hub: Hub,
    connection: Connection,
    anchor: StreamAnchor,
    backlog: list[Outgoing | FleetOutgoing],
    *,
    end_after_backlog: bool = False,
) -> AsyncIterator[bytes]:
    """The SSE frames of ``connection``; ``end_after_backlog`` for an agent that can receive no more."""
    try:
        first, ended = first_frames(hub, connection, anchor, backlog)
        yield first
        if ended or end_after_backlog:
            return
        async for frame in live(hub, connection):
            yield frame
    finally:
        hub.disconnect(connection)


async def live(hub: Hub, connection: Connection) -> AsyncIterator[bytes]:
    """What the hub queues for ``connection`` after its first frames, until the stream ends."""
    while not (hub.closing or connection.overflowed or connection.ended):
        queued = await connection.queue.get()
        if queued is CLOSE:
            return
        if queued is TICK:
            yield KEEPALIVE
            continue
        if isinstance(queued, FleetOutgoing):
            if connection.first_fleet(queued):
                yield queued.frame
                hub.fleet_delivered(connection, queued)
                if queued.command == "TERMINATE":
                    return
            continue
        if not isinstance(queued, Outgoing) or queued.sequence <= connection.sent:
            continue
        connection.sent = queued.sequence
        yield queued.frame
        hub.delivered(connection, queued)
        if queued.command == "TERMINATE":
            return


class StreamResponse(StreamingResponse):
    """A kill-switch stream: handed over to the hub after its first frames where the server allows."""

    def __init__(
        self,
        hub: Hub,
        connection: Connection,
        anchor: StreamAnchor,
        backlog: list[Outgoing | FleetOutgoing],
        *,
        end_after_backlog: bool,
        headers: Mapping[str, str],
    ) -> None:
        self.hub = hub
        self.connection = connection
        self.anchor = anchor
        self.backlog = backlog
        self.end_after_backlog = end_after_backlog
        body = events(hub, connection, anchor, backlog, end_after_backlog=end_after_backlog)
        super().__init__(body, media_type="text/event-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        detach: Detach | None = scope.get("extensions", {}).get(DETACH)
        if detach is None:
            await super().__call__(scope, receive, send)
            return
        hub, connection = self.hub, self.connection
        try:
            first, ended = first_frames(hub, connection, self.anchor, self.backlog)
            ended = ended or self.end_after_backlog or hub.closing
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            await send({"type": "http.response.body", "body": first, "more_body": not ended})
            transport = None if ended else detach(lambda: hub.disconnect(connection))
        except BaseException:
            hub.disconnect(connection)
            raise
        if transport is None:
            hub.disconnect(connection)
            if not ended:  # the client left, or the body could not be handed over: end it here
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        connection.attach(transport)
