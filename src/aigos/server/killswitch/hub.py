"""The process's open kill-switch streams, and how commands reach them from any replica.

After a trigger commits, the replica hands the signed commands to its own streams and publishes them on
the bus channel ``killswitch`` (the whole signed command travels in the message, so no replica reads the
database per delivery). Every other replica pushes them to the streams of the named agents it holds.
When the bus connection was lost (a ``resync`` message), messages may have been missed: the replica reads
the undelivered commands of its connected agents from the database. On PostgreSQL the trigger also sends
a ``NOTIFY`` in its transaction (``notices``): every other replica hears it at the commit, without Redis,
and reads the named agents' undelivered commands if it holds their streams. The bus publish itself runs
in the background, so a trigger never waits on Redis. Duplicates are harmless: each stream sends a
sequence only once.

A stream, once its first frames are out, writes straight to its connection's transport (see
``http_protocol.DETACH``): per connection there is the transport and a small ``Connection``, no task and no
queue. A command is encoded once and written to its streams in slices, so a fan-out to thousands of
streams never holds the event loop for long; a single ticker writes keep-alives the same way, and
deliveries are recorded in batches. (Served by a server without that extension, a stream is an ordinary
ASGI response fed through a bounded queue.) On shutdown every stream is ended at once, so clients
reconnect to another replica and the server can exit without waiting for them.

Fleet commands (one for a tenant or a lineage, ``fleet_sync``) are serialised once and the same frame goes,
through the same ordered fan-out, to every local stream the scope covers, found through a per-tenant index
of connected agents and the ancestors each agent's stream was opened with.

An agent holds at most ``max_streams_per_agent`` streams on one replica: a new stream past the bound ends
the agent's oldest one here. The oldest goes, not the new one, because a stream whose client vanished
without a TCP reset (a laptop closed, a NAT dropped) looks open until a keep-alive fails to send: refusing
the new stream would lock the reconnecting agent out for that long. The bound is per replica (counting
across replicas would need a shared register that a crashed replica leaves stale), so behind a load
balancer an agent holds at most that many streams per replica.

One module, a little over the house's ~450 lines, on purpose: registration, delivery, resynchronisation and
shutdown all work on the same per-agent stream table and its invariants; cut apart they would share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Table, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.canonical import canonical, parse
from aigos.core.commands import FleetCommand, SignedCommand, covers
from aigos.core.signing import Signer
from aigos.server.audit.events import NewEvent
from aigos.server.audit.log import EventLog
from aigos.server.background import cancel
from aigos.server.bus import Bus, Subscription
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow
from aigos.server.identity.state import IdentityState
from aigos.server.killswitch import notices, service

# Re-exported: what a stream is and sends is part of the hub's interface.
from aigos.server.killswitch.connection import CLOSE as CLOSE
from aigos.server.killswitch.connection import KEEPALIVE as KEEPALIVE
from aigos.server.killswitch.connection import TICK as TICK
from aigos.server.killswitch.connection import Connection as Connection
from aigos.server.killswitch.connection import FleetOutgoing as FleetOutgoing
from aigos.server.killswitch.connection import Item as Item
from aigos.server.killswitch.connection import Outgoing as Outgoing
from aigos.server.killswitch.fleet_sync import FleetSync
from aigos.server.killswitch.models import KillSwitchCommand
from aigos.server.killswitch.notices import Notice, NoticeListener
from aigos.server.telemetry import metrics

log = structlog.get_logger("aigos.killswitch.hub")
CHANNEL = "killswitch"
#: Commands per bus message (a tenant-wide trigger is split into messages of this size).
BATCH = 200
#: Stream writes (or commands encoded) per turn of the event loop: a fan-out to many streams yields between
#: slices, so no request waits behind it for long.
SLICE = 500


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
        identity: IdentityState | None = None,
    ) -> None:
        self.database = database
        #: Told of status changes heard through PostgreSQL (their bus announcement may have been lost).
        self.identity = identity
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
        #: Marks this replica's bus messages and notices, which it skips when they come back.
        self.origin = uuid.uuid4().hex
        #: Hears triggers committed on other replicas through PostgreSQL (None on SQLite: one process).
        self.notices: NoticeListener | None = None
        self._heard: asyncio.Queue[str] = asyncio.Queue()
        self._announcing: set[asyncio.Task[None]] = set()
        self._deliveries: dict[uuid.UUID, list[tuple[Connection, Outgoing, datetime]]] = defaultdict(list)
        #: Per tenant, (fleet command, agent, when) delivered here, recorded with the others.
        self._fleet_deliveries: dict[uuid.UUID, list[tuple[uuid.UUID, uuid.UUID, datetime]]] = defaultdict(
            list
        )
        #: Seconds from each delivered command's issue to its write, observed at the next flush.
        self._delivery_seconds: list[float] = []
        #: Per tenant, its agents with a stream here; per such agent, its ancestors (for lineage commands).
        self._tenant_agents: dict[uuid.UUID, set[uuid.UUID]] = {}
        self._ancestors: dict[uuid.UUID, tuple[str, ...]] = {}
        #: Fleet commands and halts (``fleet_sync.FleetSync``), attached by ``create_hub``.
        self.fleet: FleetSync | None = None
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # What is still to be sent, in order: a command (encoded when its turn comes) or an encoded item,
        # with the streams it goes to.
        self._fanout: deque[tuple[SignedCommand | Outgoing | FleetOutgoing, tuple[Connection, ...]]]
        self._fanout = deque()
        self._draining: asyncio.Task[None] | None = None

    # -- connections ------------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """How many streams are open here."""
        return sum(len(conns) for conns in self._connections.values())

    def connect(self, agent_id: uuid.UUID, tenant_id: uuid.UUID, after: int = 0) -> Connection:
        """Register a stream before reading its backlog, so nothing published meanwhile is missed.

        Past ``max_streams_per_agent`` the agent's oldest streams here are ended. Lineage fleet commands
        reach it once its ancestors are known (``set_ancestors``).
        """
        connection = Connection(agent_id, tenant_id, after, self)
        self._tenant_agents.setdefault(tenant_id, set()).add(agent_id)
        self._ancestors.setdefault(agent_id, ())
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
                self._ancestors.pop(connection.agent_id, None)
                agents = self._tenant_agents.get(connection.tenant_id)
                if agents is not None:
                    agents.discard(connection.agent_id)
                    if not agents:
                        del self._tenant_agents[connection.tenant_id]

    def delivered(self, connection: Connection, item: Outgoing) -> None:
        """Note that ``item`` went out on ``connection`` (written to the database in the next batch)."""
        self._delivery_seconds.append(time.time() - item.issued)
        self._deliveries[connection.tenant_id].append((connection, item, utcnow()))

    def set_ancestors(self, agent_id: uuid.UUID, ancestors: tuple[str, ...]) -> None:
        """The ancestors of a connected agent, learnt after it connected (lineage commands reach it)."""
        if agent_id in self._connections:
            self._ancestors[agent_id] = ancestors

    def fleet_delivered(self, connection: Connection, item: FleetOutgoing) -> None:
        """Note that the fleet command ``item`` went out on ``connection`` (recorded in the next batch)."""
        self._delivery_seconds.append(time.time() - item.issued)
        entry = (uuid.UUID(item.command_id), connection.agent_id, utcnow())
        self._fleet_deliveries[connection.tenant_id].append(entry)

    def tenant_has_streams(self, tenant_id: uuid.UUID) -> bool:
        """Whether any agent of the tenant has a stream here."""
        return tenant_id in self._tenant_agents

    # -- delivery ---------------------------------------------------------------------------------

    def dispatch(self, commands: Iterable[SignedCommand]) -> int:
        """Send ``commands`` to the local streams of their agents; returns how many streams get one.

        Each command is encoded once for all of its agent's streams. The work goes through one queue, in
        order, a slice per turn of the event loop: the first slice at once (a single agent's command
        leaves without waiting), the rest in the background.
        """
        reached = 0
        for command in commands:
            try:
                conns = self._connections.get(uuid.UUID(command.agent_id))
            except ValueError:
                continue
            if not conns:
                continue
            self._fanout.append((command, tuple(conns)))
            reached += len(conns)
        if reached:
            self._drain()
        return reached

    def dispatch_fleet(self, command: FleetCommand) -> int:
        """Send the fleet command to every local stream its scope covers (encoded once, written in slices
        as ``dispatch`` does); returns how many streams get it."""
        try:
            agents = self._tenant_agents.get(uuid.UUID(command.tenant_id))
        except ValueError:
            return 0
        if not agents:
            return 0
        covered: list[Connection] = []
        for agent_id in agents:
            if covers(command.scope, str(agent_id), self._ancestors.get(agent_id, ())):
                covered.extend(self._connections.get(agent_id, ()))
        if covered:
            self.fan_out(FleetOutgoing.of(command), covered)
        return len(covered)

    def fan_out(self, item: Outgoing | FleetOutgoing, connections: Iterable[Connection]) -> None:
        """Send one encoded ``item`` to every stream in ``connections``, in slices as ``dispatch`` does."""
        self._fanout.append((item, tuple(connections)))
        self._drain()

    @property
    def fanning_out(self) -> bool:
        """Whether some of a fan-out is still to be written."""
        return bool(self._fanout)

    def _drain(self) -> None:
        """Send one slice of the pending fan-out; schedule the next turn if some is left."""
        budget = SLICE
        pending = self._fanout
        while pending and budget > 0:
            item, conns = pending.popleft()
            if isinstance(item, SignedCommand):
                item = Outgoing.of(item)
                budget -= 1
            if len(conns) > budget:
                pending.appendleft((item, conns[budget:]))
                conns = conns[:budget]
            for connection in conns:
                connection.offer(item)
            budget -= len(conns)
        if pending and (self._draining is None or self._draining.done()):
            self._draining = asyncio.create_task(self._drain_later(), name="killswitch-fan-out")

    async def _drain_later(self) -> None:
        while self._fanout:
            await asyncio.sleep(0)
            self._drain()

    async def notify(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        agent_ids: list[uuid.UUID],
        status: str,
        commands: Iterable[SignedCommand] = (),
    ) -> None:
        """Tell the other replicas through PostgreSQL, at ``session``'s commit, that these agents have new
        ``commands`` (carried in the notice while they fit) and ``status`` (before committing a trigger;
        nothing happens on SQLite)."""
        if agent_ids:
            carried = [command.to_json() for command in commands] or None
            await notices.send(session, self.origin, tenant_id, agent_ids, status, carried)

    async def publish(self, commands: list[SignedCommand]) -> None:
        """Deliver committed commands here at once, and to every other replica through the bus.

        The bus publish runs in the background: a trigger's answer waits for neither Redis nor its
        timeouts (the other replicas hear the commit through PostgreSQL anyway).
        """
        self.dispatch(commands)
        if commands:
            task = asyncio.create_task(self._announce(commands), name="killswitch-publish")
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)

    async def _announce(self, commands: list[SignedCommand]) -> None:
        for start in range(0, len(commands), BATCH):
            chunk = [command.to_json() for command in commands[start : start + BATCH]]
            message = canonical({"origin": self.origin, "commands": chunk})
            try:
                await self.bus.pubsub.publish(CHANNEL, message)
            except Exception as exc:
                # The other replicas hear of it through PostgreSQL, or catch up once their bus is back.
                log.warning("killswitch_publish_failed", commands=len(chunk), error=repr(exc))

    async def catch_up(
        self, tenant_id: uuid.UUID | None = None, agent_ids: Iterable[uuid.UUID] | None = None
    ) -> int:
        """Queue every undelivered command of the connected agents (of one tenant, of some agents only),
        read from the database; returns how many were found."""
        only = None if agent_ids is None else set(agent_ids)
        by_tenant: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for agent_id, conns in list(self._connections.items()):
            if only is not None and agent_id not in only:
                continue
            for connection in conns:
                if tenant_id is None or connection.tenant_id == tenant_id:
                    by_tenant[connection.tenant_id].append(agent_id)
                break
        found = 0
        for tenant, agents in by_tenant.items():
            # A slice of agents per read: thousands of rows loaded at once would hold the event loop.
            for start in range(0, len(agents), SLICE):
                async with self.database.session() as session:
                    await set_tenant(session, tenant)
                    rows = await service.pending(session, tenant, agents[start : start + SLICE])
                    commands = [service.signed(row) for row in rows]
                found += len(commands)
                self.dispatch(commands)
        return found

    def _receive(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("origin") == self.origin:
            return  # our own commands were dispatched here when published
        if "fleet" in data or "retire" in data:
            if self.fleet is not None:
                self.fleet.received(data)
            return
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
                    if self.fleet is not None:
                        await self.fleet.reload()
                    log.info("killswitch_resynchronised", commands=caught)
                else:
                    self._receive(parse(message.data))
            except Exception:
                log.exception("killswitch_delivery_failed")
            # A tenant-wide trigger arrives as many messages at once, and the subscription hands over
            # those already queued without suspending: let the rest of the loop run between two.
            await asyncio.sleep(0)

    async def _follow_notices(self) -> None:
        while True:
            payloads = [await self._heard.get()]
            while not self._heard.empty():
                payloads.append(self._heard.get_nowait())
            try:
                await self._apply_notices(payloads)
            except Exception:
                # The database failed us: try again shortly, rather than leave a stream without its command.
                log.exception("killswitch_notice_failed", notices=len(payloads))
                for payload in payloads:
                    self._heard.put_nowait(payload)
                await asyncio.sleep(0.5)

    async def _apply_notices(self, payloads: list[str]) -> None:
        """Statuses to the identity state, then the undelivered commands of the named agents held here."""
        wanted: dict[uuid.UUID, set[uuid.UUID] | None] = {}
        reload_identity = False
        for notice in (Notice.decode(payload) for payload in payloads):
            if notice is None or notice.origin == self.origin:
                continue  # our own: applied and dispatched when triggered
            if notice.fleet_id is not None:
                if self.fleet is not None:
                    await self.fleet.heard(notice.tenant_id, notice.fleet_id)
                continue
            if notice.agent_ids is None:
                wanted[notice.tenant_id] = None
                reload_identity = True
                continue
            if self.identity is not None and notice.status is not None:
                agents = [str(agent_id) for agent_id in notice.agent_ids]
                message = {"type": "statuses", "agent_ids": agents, "status": notice.status, "at": notice.at}
                await self.identity.receive(message)
            if notice.commands is not None:
                # Carried in the notice: to the streams at once, no database read.
                self._receive({"commands": list(notice.commands)})
                continue
            if notice.tenant_id in wanted:
                earlier = wanted[notice.tenant_id]
                if earlier is not None:  # else the whole tenant is caught up anyway
                    earlier.update(notice.agent_ids)
            else:
                wanted[notice.tenant_id] = set(notice.agent_ids)
        if reload_identity and self.identity is not None:
            await self.identity.reload()
        for tenant_id, agent_ids in wanted.items():
            await self.catch_up(tenant_id, agent_ids)

    # -- background: keep-alives and delivery records ---------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_seconds)
            written = 0
            for conns in list(self._connections.values()):
                for connection in list(conns):
                    connection.offer(TICK)
                written += len(conns)
                if written >= SLICE:
                    written = 0
                    await asyncio.sleep(0)  # thousands of streams: a slice per turn of the loop

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
        fleet_batches, self._fleet_deliveries = self._fleet_deliveries, defaultdict(list)
        latencies, self._delivery_seconds = self._delivery_seconds, []
        metrics.delivered(latencies)
        if fleet_batches and self.fleet is not None:
            await self.fleet.record_deliveries(fleet_batches)
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
                        event_type="kill_switch.delivered",
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
        if self.database.kind == "postgresql":
            self._tasks.append(asyncio.create_task(self._follow_notices(), name="killswitch-notices-apply"))
            self.notices = NoticeListener(
                notices.connect_args(self.database.engine), self._heard.put_nowait, self._reconnected
            )
            await self.notices.start()
        if self.fleet is not None:
            await self.fleet.start(events)

    async def _reconnected(self) -> None:
        """Notices may have been missed: catch up on commands and fleet halts from the database."""
        await self.catch_up()
        if self.fleet is not None:
            await self.fleet.reload()

    def replicas(self) -> int:
        """How many server processes share this database (1 when they cannot be counted)."""
        return self.notices.replicas if self.notices is not None else 1

    def begin_close(self) -> None:
        """End every stream now (server shutdown): clients reconnect, to another replica if there is one."""
        self.closing = True
        for conns in list(self._connections.values()):
            for connection in list(conns):
                connection.offer(CLOSE)

    async def stop(self) -> None:
        """End the streams, stop the background tasks and record the last deliveries."""
        self.begin_close()
        if self.notices is not None:
            await self.notices.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        await cancel(*self._tasks, *self._announcing, self._draining)
        with contextlib.suppress(Exception):
            await self.flush()
        if self._subscription is not None:
            await self._subscription.close()


def create_hub(
    database: Database, bus: Bus, settings: Settings, identity: IdentityState | None = None
) -> Hub:
    """The hub configured by ``settings`` (start it with the runtime's event log)."""
    hub = Hub(
        database,
        bus,
        service.command_signer(settings.pepper),
        keepalive_seconds=settings.killswitch_keepalive_seconds,
        flush_seconds=settings.killswitch_delivery_flush_seconds,
        max_streams_per_agent=settings.killswitch_max_streams_per_agent,
        identity=identity,
    )
    hub.fleet = FleetSync(hub, database, identity, settings.max_lineage_depth)
    return hub
