"""One open kill-switch stream as the hub sees it (``Connection``), and what it sends (``Outgoing``).

A command is encoded once, as an SSE frame and as the HTTP/1.1 chunk that carries it, and the same bytes go
to every stream of its agent; a fleet command (``FleetOutgoing``), likewise, to every stream it covers. A
stream is fed through a bounded queue until its first frames are out; once its connection is handed over
(``http_protocol.DETACH``), whatever is offered is written to the transport at once: no task and no queue
per stream. A client that stops reading is dropped once
``MAX_UNSENT`` bytes wait for it (it reconnects and catches up from the database).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from aigos.core.commands import FleetCommand, SignedCommand, parse_time

#: Commands waiting per queued connection; a client this far behind is disconnected and catches up on
#: reconnect.
QUEUE_SIZE = 64
KEEPALIVE = b": keep-alive\n\n"
#: Bytes a stream may leave unsent in its transport before it is dropped as not reading.
MAX_UNSENT = 64 * 1024


class Deliveries(Protocol):
    """Where a stream reports what it sent (the hub, which records deliveries in batches)."""

    def delivered(self, connection: Connection, item: Outgoing) -> None:
        """``item`` went out on ``connection``."""

    def fleet_delivered(self, connection: Connection, item: FleetOutgoing) -> None:
        """The fleet command ``item`` went out on ``connection``."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One command ready to send: its SSE frame, encoded once for every stream of the agent."""

    sequence: int
    command_id: str
    command: str
    frame: bytes
    #: When the command was issued (Unix time), for the trigger-to-delivery metric.
    issued: float
    #: The frame as one HTTP/1.1 chunk, for streams that write to their connection directly.
    chunk: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunk", _chunk(self.frame))

    @classmethod
    def of(cls, command: SignedCommand) -> Outgoing:
        """The frame of ``command``: ``id``, ``event: kill-switch`` and the signed JSON."""
        data = json.dumps(command.to_json(), separators=(",", ":"))
        frame = f"id: {command.sequence}\nevent: kill-switch\ndata: {data}\n\n".encode()
        issued = parse_time(command.issued_at).timestamp()
        return cls(command.sequence, command.command_id, command.command, frame, issued)


@dataclass(frozen=True, slots=True)
class FleetOutgoing:
    """One fleet command ready to send: its SSE frame (no ``id``: ``Last-Event-ID`` stays the agent's own
    sequence), encoded once for every stream it reaches."""

    command_id: str
    command: str
    frame: bytes
    #: When the command was issued (Unix time), for the trigger-to-delivery metric.
    issued: float
    #: The frame as one HTTP/1.1 chunk, for streams that write to their connection directly.
    chunk: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunk", _chunk(self.frame))

    @classmethod
    def of(cls, command: FleetCommand) -> FleetOutgoing:
        """The frame of ``command``: ``event: kill-switch-fleet`` and the signed JSON."""
        data = json.dumps(command.to_json(), separators=(",", ":"))
        frame = f"event: kill-switch-fleet\ndata: {data}\n\n".encode()
        return cls(command.command_id, command.command, frame, parse_time(command.issued_at).timestamp())


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Signal:
    """Queue items that are not commands."""


CLOSE = _Signal()
TICK = _Signal()
Item = Outgoing | FleetOutgoing | _Signal
KEEPALIVE_CHUNK = _chunk(KEEPALIVE)
LAST_CHUNK = b"0\r\n\r\n"


class Connection:
    """One open stream of one agent.

    Until ``attach`` it is fed through its queue (read by the stream's ASGI response); once attached to
    its connection's transport, whatever is offered is written there at once, and the queue is never
    made: no task, no queue, no buffer per stream beyond the transport's own.
    """

    __slots__ = (
        "_queue",
        "agent_id",
        "ended",
        "fleet_sent",
        "hub",
        "overflowed",
        "sent",
        "tenant_id",
        "transport",
    )

    def __init__(
        self, agent_id: uuid.UUID, tenant_id: uuid.UUID, after: int, hub: Deliveries | None = None
    ) -> None:
        self.agent_id = agent_id
        self.tenant_id = tenant_id
        #: The highest sequence this stream has sent (or the client said it has: ``Last-Event-ID``).
        self.sent = after
        self.overflowed = False
        #: Ended by the server (superseded by a newer stream of the agent), whatever the queue holds.
        self.ended = False
        #: The fleet commands this stream sent, by id (they carry no per-agent sequence); made on first use.
        self.fleet_sent: set[str] | None = None
        #: Told of what the stream sent once it writes directly (``attach``).
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self._queue: asyncio.Queue[Item] | None = None

    @property
    def queue(self) -> asyncio.Queue[Item]:
        """What waits for the stream's ASGI response (made on first use)."""
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE_SIZE)
        return self._queue

    def offer(self, item: Item) -> None:
        """Send ``item`` now when attached, else queue it without waiting (a full queue ends the stream:
        the client reconnects)."""
        if self.transport is not None:
            self._write(item)
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True

    def end(self) -> None:
        """Close the stream at its next step, even if its queue is full."""
        self.ended = True
        self.offer(CLOSE)

    def attach(self, transport: asyncio.Transport) -> None:
        """Write to ``transport`` from now on; what was queued meanwhile goes first."""
        queued, self._queue = self._queue, None
        self.transport = transport
        if self.overflowed or self.ended:
            self._finish()
            return
        while queued is not None and not queued.empty():
            self._write(queued.get_nowait())

    def first_fleet(self, item: FleetOutgoing) -> bool:
        """Whether ``item`` is new to this stream (noting it sent); a fleet command goes out once."""
        if self.fleet_sent is None:
            self.fleet_sent = set()
        elif item.command_id in self.fleet_sent:
            return False
        self.fleet_sent.add(item.command_id)
        return True

    def _write(self, item: Item) -> None:
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            return
        if item is CLOSE:
            self._finish()
            return
        if transport.get_write_buffer_size() > MAX_UNSENT:
            # The client stopped reading: drop it rather than buffer for it (it catches up on reconnect).
            self.overflowed = True
            transport.abort()
            return
        if item is TICK:
            transport.write(KEEPALIVE_CHUNK)
            return
        if isinstance(item, FleetOutgoing):
            if self.first_fleet(item):
                transport.write(item.chunk)
                if self.hub is not None:
                    self.hub.fleet_delivered(self, item)
                if item.command == "TERMINATE":
                    self._finish()
            return
        if not isinstance(item, Outgoing) or item.sequence <= self.sent:
            return
        self.sent = item.sequence
        transport.write(item.chunk)
        if self.hub is not None:
            self.hub.delivered(self, item)
        if item.command == "TERMINATE":
            self._finish()

    def _finish(self) -> None:
        """End the chunked body and the connection (the protocol's lost callback then forgets the stream)."""
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(LAST_CHUNK)
            self.transport.close()
