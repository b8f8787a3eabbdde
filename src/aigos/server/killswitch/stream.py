"""The body of one kill-switch stream: the anchor, the backlog, then live commands, keep-alives, and the end.

A stream sends each sequence at most once, and each fleet command at most once (the backlog read from
the database and the live commands may overlap), and ends when the client goes away, after it sent a
TERMINATE (its own or a fleet one), when it fell too far behind, when a newer stream of the same agent
took its place (the per-agent bound), or when the server shuts down.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from aigos.core.commands import StreamAnchor
from aigos.server.killswitch.hub import CLOSE, KEEPALIVE, TICK, Connection, FleetOutgoing, Hub, Outgoing

OPENED = b": connected\n\n"


def opened(anchor: StreamAnchor) -> bytes:
    """The first frames: a ``connected`` comment, then ``event: opened`` with the signed anchor (no ``id``,
    so an EventSource's ``Last-Event-ID`` is left alone)."""
    data = json.dumps(anchor.to_json(), separators=(",", ":"))
    return OPENED + f"event: opened\ndata: {data}\n\n".encode()


async def events(
    hub: Hub,
    connection: Connection,
    anchor: StreamAnchor,
    backlog: list[Outgoing | FleetOutgoing],
    *,
    end_after_backlog: bool = False,
) -> AsyncIterator[bytes]:
    """The SSE frames of ``connection``; ``end_after_backlog`` for an agent that can receive no more."""
    # Fleet commands carry no per-agent sequence: the ones this stream sent, by id (a handful at most).
    fleet_sent: set[str] = set()
    try:
        yield opened(anchor)
        for item in backlog:
            if isinstance(item, FleetOutgoing):
                if item.command_id not in fleet_sent:
                    fleet_sent.add(item.command_id)
                    yield item.frame
                    hub.fleet_delivered(connection, item)
                    if item.command == "TERMINATE":
                        return
                continue
            if item.sequence <= connection.sent:
                continue
            connection.sent = item.sequence
            yield item.frame
            hub.delivered(connection, item)
            if item.command == "TERMINATE":
                return
        if end_after_backlog:
            return
        while not (hub.closing or connection.overflowed or connection.ended):
            queued = await connection.queue.get()
            if queued is CLOSE:
                return
            if queued is TICK:
                yield KEEPALIVE
                continue
            if isinstance(queued, FleetOutgoing):
                if queued.command_id not in fleet_sent:
                    fleet_sent.add(queued.command_id)
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
    finally:
        hub.disconnect(connection)
