"""Fleet commands across replicas: the halts every replica holds, their delivery, and the bookkeeping.

Once a fleet trigger has committed, the triggering replica applies it to its ``Halts`` and its streams,
publishes it on the bus (in the background) and wakes its bookkeeper; the trigger's transaction also sent a
PostgreSQL notice, so the other replicas hear it without Redis too. A receiver applies a command once
(``Halts.apply`` keeps the highest fleet sequence per tenant) and queues it on the local streams it covers.
At start, and whenever the bus or the notice connection was lost, the halts are read from the database
again and the commands a tenant's local streams missed are sent to them.

The bookkeeper moves the agents' statuses and writes their delivery records (``fleet.bookkeep``) after the
answer, one fleet command at a time in each tenant's sequence order. It runs when woken by a trigger on
this replica (``BOOKKEEPING_DELAY_SECONDS`` later, so the fan-out goes first), at start (a replica
that crashed may have left some undone) and every ``SWEEP_SECONDS`` (one that crashed while others
run). When a TERMINATE's bookkeeping is done its halt ends (its agents' statuses now say terminated), on
every replica after ``RETIRE_GRACE_SECONDS``, long enough for the status announcement that went out with
it to arrive first.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from aigos.core.canonical import canonical
from aigos.core.commands import FleetCommand
from aigos.server.audit.log import EventLog
from aigos.server.background import cancel
from aigos.server.db import Database
from aigos.server.db.commit_hooks import run_after_commit
from aigos.server.db.database import set_platform_scope, set_tenant
from aigos.server.identity.state import IdentityState
from aigos.server.killswitch import fleet, notices
from aigos.server.killswitch.halts import Halts
from aigos.server.killswitch.models import FleetCommand as FleetRow
from aigos.server.telemetry import metrics

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from aigos.server.killswitch.hub import Hub

log = structlog.get_logger("aigos.killswitch.fleet")
CHANNEL = "killswitch"
SWEEP_SECONDS = 30.0
RETIRE_GRACE_SECONDS = 5.0
#: How long after a trigger on this replica its bookkeeping starts.
BOOKKEEPING_DELAY_SECONDS = 0.5


class FleetSync:
    """The replica's fleet halts, kept current, and its bookkeeper."""

    def __init__(self, hub: Hub, database: Database, identity: IdentityState | None, max_depth: int) -> None:
        self.hub = hub
        self.database = database
        self.identity = identity
        self.max_depth = max_depth
        self.halts = Halts(database, max_depth)
        self.events: EventLog | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, events: EventLog) -> None:
        """Read the halts in force, then start the bookkeeper (which first finishes what was left)."""
        self.events = events
        await self.reload()
        self._wake.set()
        self._tasks = [asyncio.create_task(self._bookkeeper(), name="killswitch-fleet-bookkeeper")]

    async def stop(self) -> None:
        """Stop the bookkeeper (an unfinished row is finished by the next replica to start or sweep)."""
        await cancel(*self._tasks, *self._background)
        self._tasks = []

    def _soon(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- this replica's triggers ------------------------------------------------------------------

    async def committed(self, issued: fleet.Issued) -> None:
        """A fleet trigger committed here: halt, deliver, tell the others, bookkeep (after the commit)."""
        command = issued.command
        lifted = [str(i) for i in issued.lifted]
        message = canonical({"origin": self.hub.origin, "fleet": command.to_json(), "lifted": lifted})
        # Scheduled before the local fan-out wakes this replica's streams: the other replicas' streams do
        # not wait for this one's to be written.
        self._soon(self._publish(message), "killswitch-fleet-publish")
        if self.halts.apply(command, lifted):
            self.hub.dispatch_fleet(command)
        # Not at once: the fan-out to the streams and the checks that now deny go first on this loop; the
        # bookkeeping (the old per-agent work, most of a second for a thousand agents) waits its turn.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(BOOKKEEPING_DELAY_SECONDS, self._wake.set)

    async def _publish(self, message: bytes) -> None:
        try:
            await self.hub.bus.pubsub.publish(CHANNEL, message)
        except Exception as exc:
            # The other replicas hear of it through PostgreSQL, or read it once their bus is back.
            log.warning("killswitch_fleet_publish_failed", error=repr(exc))

    # -- other replicas' ----------------------------------------------------------------------------

    def received(self, data: dict[str, Any]) -> None:
        """A bus message of another replica: a fleet command, or a TERMINATE halt to retire."""
        if "retire" in data:
            try:
                tenant_id = uuid.UUID(str(data["tenant_id"]))
                command_id = str(uuid.UUID(str(data["retire"])))
            except (KeyError, ValueError):
                log.warning("killswitch_message_malformed")
                return
            self._retire_later(tenant_id, command_id)
            return
        try:
            command = FleetCommand.from_json(data.get("fleet"))
            lifted = [str(uuid.UUID(str(i))) for i in data.get("lifted") or []]
        except Exception:
            log.warning("killswitch_message_malformed")
            return
        if self.halts.apply(command, lifted):
            self.hub.dispatch_fleet(command)

    async def heard(self, tenant_id: uuid.UUID, fleet_id: uuid.UUID) -> None:
        """A PostgreSQL notice of a fleet command committed or bookkept on another replica."""
        async with self.database.session() as session:
            await set_tenant(session, tenant_id)
            row = await fleet.get(session, tenant_id, fleet_id)
            if row is None:
                return
            lifted = await fleet.lifted_by(session, tenant_id, fleet_id) if row.command == "RESUME" else []
            command = fleet.signed(row)
            bookkept = row.bookkeeping_done_at is not None
            retired = row.command == "TERMINATE" and bookkept and not row.active
        if self.halts.apply(command, [str(i) for i in lifted]):
            self.hub.dispatch_fleet(command)
        if retired:
            self._retire_later(tenant_id, command.command_id)
        if bookkept and command.command == "RESUME":
            # Heard after the statuses it set (one transaction's notices arrive in order).
            self.halts.bookkept(tenant_id, command.command_id)

    def _retire_later(self, tenant_id: uuid.UUID, command_id: str) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(
                RETIRE_GRACE_SECONDS, self.halts.retire, tenant_id, command_id
            )

    async def reload(self) -> None:
        """Read the halts again (at start, after a lost connection); send local streams what they missed."""
        async with self.database.session() as session:
            await set_platform_scope(session)
            active, resumes, tops = await fleet.load(session)
            before = self.halts.replace(
                [fleet.signed(row) for row in active],
                [fleet.signed(row) for row in resumes],
                tops,
                bookkept=[str(row.id) for row in resumes if row.bookkeeping_done_at is not None],
            )
        for tenant_id, top in tops.items():
            seen = before.get(tenant_id)
            if seen is None or top <= seen or not self.hub.tenant_has_streams(tenant_id):
                continue
            async with self.database.session() as session:
                await set_tenant(session, tenant_id)
                missed = [fleet.signed(row) for row in await fleet.after(session, tenant_id, seen)]
            for command in missed:
                self.hub.dispatch_fleet(command)

    # -- deliveries ---------------------------------------------------------------------------------

    async def record_deliveries(
        self, batches: dict[uuid.UUID, list[tuple[uuid.UUID, uuid.UUID, datetime]]]
    ) -> None:
        """Record fleet deliveries, one statement per tenant."""
        for tenant_id, delivered in batches.items():
            first = {(fleet_id, agent_id): at for fleet_id, agent_id, at in reversed(delivered)}
            async with self.database.session() as session:
                await set_tenant(session, tenant_id)
                await fleet.record_deliveries(
                    session, tenant_id, [(f, a, at) for (f, a), at in first.items()]
                )

    # -- bookkeeping ----------------------------------------------------------------------------------

    async def _bookkeeper(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SWEEP_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.bookkeep_all()
            except Exception:
                # Tried again at the next wake or sweep; the halts deny meanwhile. Counted, so that one
                # that fails every time (as a fleet past a statement's size once did) pages someone.
                metrics.KILLSWITCH_BOOKKEEPING_FAILURES.inc()
                log.exception("killswitch_fleet_bookkeeping_failed")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def bookkeep_all(self) -> int:
        """Bookkeep every unfinished fleet command this replica can claim; returns how many it did."""
        async with self.database.session() as session:
            await set_platform_scope(session)
            tenants = await fleet.tenants_with_unfinished(session)
        done = 0
        for tenant_id in tenants:
            done += await self._bookkeep_tenant(tenant_id)
        return done

    async def _bookkeep_tenant(self, tenant_id: uuid.UUID) -> int:
        assert self.events is not None
        done = 0
        while True:
            async with self.database.session() as session:
                await set_tenant(session, tenant_id)
                row = await fleet.claim_next(session, tenant_id)
                if not row:
                    return done  # none left, or another replica is at it
                reached = await self._bookkeep_row(session, row)
                fleet_id, command, sequence = row.id, row.command, row.sequence
                await notices.send_fleet(session, self.hub.origin, tenant_id, fleet_id)
            await run_after_commit(session)
            done += 1
            log.info(
                "killswitch_fleet_bookkept",
                command_id=str(fleet_id),
                command=command,
                sequence=sequence,
                agents=len(reached),
            )
            if command == "RESUME":
                self.halts.bookkept(tenant_id, str(fleet_id))
            if command == "TERMINATE":
                self._retire_later(tenant_id, str(fleet_id))
                message = canonical(
                    {"origin": self.hub.origin, "retire": str(fleet_id), "tenant_id": str(tenant_id)}
                )
                self._soon(self._publish(message), "killswitch-fleet-publish")

    async def _bookkeep_row(self, session: AsyncSession, row: FleetRow) -> list[uuid.UUID]:
        assert self.events is not None
        assert self.identity is not None
        reached = await fleet.bookkeep(session, self.events, self.identity, row, max_depth=self.max_depth)
        target, _ = fleet.target_of(row.command)
        # The statuses, to the other replicas through PostgreSQL as for any trigger (Redis may be down).
        await self.hub.notify(session, row.tenant_id, reached, target.value)
        return reached
