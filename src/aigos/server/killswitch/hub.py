"""The process's open kill-switch streams, and how commands reach them from any replica.

After a trigger commits, the replica hands the signed commands to its own streams and publishes them on
the bus channel ``killswitch`` (the whole signed command travels in the message, so no replica reads the
database per delivery). Every other replica pushes them to the streams of the named agents it holds.
When the bus connection was lost (a ``resync`` message), messages may have been missed: the replica reads
the undelivered commands of its connected agents from the database. Duplicates are harmless: each stream
sends a sequence only once.

Per connection there is one bounded queue and nothing else: a single ticker feeds keep-alives to all
of them, and deliveries are recorded in batches. On shutdown every stream is ended at once, so clients
reconnect to another replica and the server can exit without waiting for them.

An agent holds at most ``max_streams_per_agent`` streams on one replica: a new stream past the bound ends
the agent's oldest one here. The oldest goes, not the new one, because a stream whose client vanished
without a TCP reset (a laptop closed, a NAT dropped) looks open until a keep-alive fails to send: refusing
the new stream would lock the reconnecting agent out for that long. The bound is per replica (counting
across replicas would need a shared register that a crashed replica leaves stale), so behind a load
balancer an agent holds at most that many streams per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any

import structlog
from sqlalchemy import Table, bindparam, update

from aigos.core.canonical import canonical, parse
from aigos.core.commands import SignedCommand
from aigos.core.signing import Signer
from aigos.server.audit.events import NewEvent
from aigos.server.audit.log import EventLog
from aigos.server.background import cancel
from aigos.server.bus import Bus, Subscription
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow
from aigos.server.killswitch import service
from aigos.server.killswitch.models import KillSwitchCommand

log = structlog.get_logger("aigos.killswitch.hub")
CHANNEL = "killswitch"
#: Commands waiting per connection; a client this far behind is disconnected and catches up on reconnect.
QUEUE_SIZE = 64
#: Commands per bus message (a tenant-wide trigger is split into messages of this size).
BATCH = 200
KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One command ready to send: its SSE frame, encoded once for every stream of the agent."""

    sequence: int
    command_id: str
    command: str
    frame: bytes

    @classmethod
    def of(cls, command: SignedCommand) -> Outgoing:
        """The frame of ``command``: ``id``, ``event: kill-switch`` and the signed JSON."""
        data = json.dumps(command.to_json(), separators=(",", ":"))
        frame = f"id: {command.sequence}\nevent: kill-switch\ndata: {data}\n\n".encode()
        return cls(command.sequence, command.command_id, command.command, frame)


class _Signal:
    """Queue items that are not commands."""


CLOSE = _Signal()
TICK = _Signal()
Item = Outgoing | _Signal


class Connection:
    """One open stream of one agent."""

    __slots__ = ("agent_id", "ended", "overflowed", "queue", "sent", "tenant_id")

    def __init__(self, agent_id: uuid.UUID, tenant_id: uuid.UUID, after: int) -> None:
        self.agent_id = agent_id
        self.tenant_id = tenant_id
        #: The highest sequence this stream has sent (or the client said it has: ``Last-Event-ID``).
        self.sent = after
        self.overflowed = False
        #: Ended by the server (superseded by a newer stream of the agent), whatever the queue holds.
        self.ended = False
        self.queue: asyncio.Queue[Item] = asyncio.Queue(QUEUE_SIZE)

    def offer(self, item: Item) -> None:
        """Queue ``item`` without waiting; a full queue ends the stream (the client reconnects)."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True

    def end(self) -> None:
        """Close the stream at its next step, even if its queue is full."""
        self.ended = True
        self.offer(CLOSE)


class Hub:
    """The replica's connected agents and the delivery of commands to them."""

    def __init__(
        self,
        database: Database,
        bus: Bus,
        signer: Signer,
        *,
        keepalive_seconds: float,
        flush_seconds: float,
        max_streams_per_agent: int = 4,
    ) -> None:
        self.database = database
        #: Signs this replica's commands; every replica derives the same key from the server secret.
        self.signer = signer
        self.bus = bus
        #: Where deliveries are logged; given by ``start`` (the event log is opened with the runtime).
        self.events: EventLog | None = None
        self.keepalive_seconds = keepalive_seconds
        self.flush_seconds = flush_seconds
        self.max_streams_per_agent = max_streams_per_agent
        self.closing = False
        # Per agent, its streams oldest first (a dict is an insertion-ordered set).
        self._connections: dict[uuid.UUID, dict[Connection, None]] = {}
        self._origin = uuid.uuid4().hex
        self._deliveries: dict[uuid.UUID, list[tuple[Connection, Outgoing, datetime]]] = defaultdict(list)
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- connections ------------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """How many streams are open here."""
        return sum(len(conns) for conns in self._connections.values())

    def connect(self, agent_id: uuid.UUID, tenant_id: uuid.UUID, after: int = 0) -> Connection:
        """Register a stream before reading its backlog, so nothing published meanwhile is missed.

        Past ``max_streams_per_agent`` the agent's oldest streams here are ended.
        """
        connection = Connection(agent_id, tenant_id, after)
        conns = self._connections.setdefault(agent_id, {})
        while len(conns) >= self.max_streams_per_agent:
            oldest = next(iter(conns))
            del conns[oldest]
            oldest.end()
            log.info("killswitch_stream_superseded", agent_id=str(agent_id), limit=self.max_streams_per_agent)
        conns[connection] = None
        return connection

    def disconnect(self, connection: Connection) -> None:
        """Forget a stream that ended."""
        conns = self._connections.get(connection.agent_id)
        if conns is not None:
            conns.pop(connection, None)
            if not conns:
                del self._connections[connection.agent_id]

    def delivered(self, connection: Connection, item: Outgoing) -> None:
        """Note that ``item`` went out on ``connection`` (written to the database in the next batch)."""
        self._deliveries[connection.tenant_id].append((connection, item, utcnow()))

    # -- delivery ---------------------------------------------------------------------------------

    def dispatch(self, commands: Iterable[SignedCommand]) -> int:
        """Queue ``commands`` on the local streams of their agents; returns how many streams got one."""
        reached = 0
        for command in commands:
            try:
                conns = self._connections.get(uuid.UUID(command.agent_id))
            except ValueError:
                continue
            if not conns:
                continue
            item = Outgoing.of(command)
            for connection in list(conns):
                connection.offer(item)
                reached += 1
        return reached

    async def publish(self, commands: list[SignedCommand]) -> None:
        """Deliver committed commands here at once and to every other replica through the bus."""
        self.dispatch(commands)
        for start in range(0, len(commands), BATCH):
            chunk = [command.to_json() for command in commands[start : start + BATCH]]
            message = canonical({"origin": self._origin, "commands": chunk})
            try:
                await self.bus.pubsub.publish(CHANNEL, message)
            except Exception:
                # Replicas that missed it catch up from the database once their bus connection is back.
                log.exception("killswitch_publish_failed", commands=len(chunk))

    async def catch_up(self) -> int:
        """Queue every undelivered command of the connected agents, read from the database."""
        by_tenant: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for agent_id, conns in list(self._connections.items()):
            for connection in conns:
                by_tenant[connection.tenant_id].append(agent_id)
                break
        found = 0
        for tenant_id, agent_ids in by_tenant.items():
            async with self.database.session() as session:
                await set_tenant(session, tenant_id)
                rows = await service.pending(session, tenant_id, agent_ids)
                commands = [service.signed(row) for row in rows]
            found += len(commands)
            self.dispatch(commands)
        return found

    def _receive(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("origin") == self._origin:
            return  # our own commands were dispatched here when published
        commands = []
        for item in data.get("commands") or []:
            try:
                commands.append(SignedCommand.from_json(item))
            except Exception:
                log.warning("killswitch_message_malformed")
        self.dispatch(commands)

    async def _listen(self) -> None:
        assert self._subscription is not None
        async for message in self._subscription:
            try:
                if message.is_resync:
                    caught = await self.catch_up()
                    log.info("killswitch_resynchronised", commands=caught)
                else:
                    self._receive(parse(message.data))
            except Exception:
                log.exception("killswitch_delivery_failed")

    # -- background: keep-alives and delivery records ---------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_seconds)
            for conns in list(self._connections.values()):
                for connection in list(conns):
                    connection.offer(TICK)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Exception:
                log.exception("killswitch_delivery_record_failed")

    async def flush(self) -> None:
        """Mark delivered commands ``delivered`` (one statement per tenant) and log their delivery."""
        batches, self._deliveries = self._deliveries, defaultdict(list)
        table = KillSwitchCommand.__table__
        assert isinstance(table, Table)
        stmt = (
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.status == "pending")
            .values(status="delivered", delivered_at=bindparam("b_at"))
        )
        for tenant_id, deliveries in batches.items():
            first: dict[str, tuple[Connection, Outgoing, datetime]] = {}
            for delivery in deliveries:
                first.setdefault(delivery[1].command_id, delivery)
            async with self.database.session() as session:
                await set_tenant(session, tenant_id)
                connection = await session.connection()
                await connection.execute(
                    stmt, [{"b_id": uuid.UUID(cid), "b_at": at} for cid, (_, _, at) in first.items()]
                )
            for conn, item, at in first.values():
                if self.events is None:
                    break
                self.events.enqueue(
                    NewEvent(
                        tenant_id=tenant_id,
                        event_type="killswitch.delivered",
                        actor_type="system",
                        actor_id=None,
                        data={
                            "command_id": item.command_id,
                            "command": item.command,
                            "sequence": item.sequence,
                        },
                        agent_id=str(conn.agent_id),
                        occurred_at=at,
                    )
                )

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, events: EventLog) -> None:
        """Subscribe to the channel and start the ticker, the recorder and the shutdown watch."""
        self.events = events
        self._subscription = self.bus.pubsub.subscribe(CHANNEL)
        await self._subscription.open()
        self._tasks = [
            asyncio.create_task(self._listen(), name="killswitch-listen"),
            asyncio.create_task(self._tick(), name="killswitch-keepalive"),
            asyncio.create_task(self._flush_loop(), name="killswitch-deliveries"),
        ]
        self._watch_shutdown_signals()

    def begin_close(self) -> None:
        """End every stream now (server shutdown): clients reconnect, to another replica if there is one."""
        self.closing = True
        for conns in list(self._connections.values()):
            for connection in list(conns):
                connection.offer(CLOSE)

    async def stop(self) -> None:
        """End the streams, stop the background tasks and record the last deliveries."""
        self.begin_close()
        await cancel(*self._tasks)
        with contextlib.suppress(Exception):
            await self.flush()
        if self._subscription is not None:
            await self._subscription.close()

    def _watch_shutdown_signals(self) -> None:
        """End streams as soon as uvicorn is told to stop.

        uvicorn waits for open connections to finish before it runs the lifespan shutdown, and a stream
        never finishes by itself: so its signal handler (``Server.handle_exit``, installed before the
        lifespan starts and restored after) is wrapped to close the streams first. Outside uvicorn (tests
        in-process) there is nothing to wrap.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                current = signal.getsignal(sig)
            except ValueError:
                return
            if not callable(current) or not hasattr(getattr(current, "__self__", None), "should_exit"):
                continue

            def on_signal(signum: int, frame: FrameType | None, previous: Any = current) -> None:
                loop.call_soon_threadsafe(self.begin_close)
                previous(signum, frame)

            try:
                signal.signal(sig, on_signal)
            except ValueError:  # not the main thread
                return


def create_hub(database: Database, bus: Bus, settings: Settings) -> Hub:
    """The hub configured by ``settings`` (start it with the runtime's event log)."""
    return Hub(
        database,
        bus,
        service.command_signer(settings.pepper),
        keepalive_seconds=settings.killswitch_keepalive_seconds,
        flush_seconds=settings.killswitch_delivery_flush_seconds,
        max_streams_per_agent=settings.killswitch_max_streams_per_agent,
    )
