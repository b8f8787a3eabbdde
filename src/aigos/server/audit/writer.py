"""The event log's batch writer: appends what is queued, per tenant, and confirms it durable.

A flush takes what is queued now and appends it in batches of ``batch_size``: grouped by tenant, each group
in a transaction of its own (several tenants at once on PostgreSQL; together in one short transaction on
SQLite's one writer), hashed in small pieces between requests. On PostgreSQL a batch commits without
waiting for the WAL; once the flush is done one durable commit (``flush_wal``) covers every batch, and only
then does the journal let their events go. If the database restarted meanwhile, what it lost is found by id
and queued again.

One batch is never retried forever and one tenant never holds back another: a group the database refuses
is halved until the entry it refuses is found; that entry is set aside (kept in the spill folder with its
error, counted, recorded in its tenant's log as ``audit.event_set_aside``) and the others are appended. On
an outage (or a cancellation) what was not appended goes back to the front of the queue, in order, and
entries whose outcome is unknown are checked by id before they are written again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select

from aigos.server.audit import spill
from aigos.server.audit.appender import Appender
from aigos.server.audit.events import NewEvent
from aigos.server.audit.journal import Journal
from aigos.server.audit.models import AuditEvent
from aigos.server.audit.records import Tallies, printable, set_aside_event
from aigos.server.db import Database
from aigos.server.db.outage import is_outage
from aigos.server.in_flight import InFlight

log = structlog.get_logger("aigos.audit")

#: Tenants whose events one flush writes at the same time (each on its own connection).
PARALLEL_TENANTS = 4
#: How long the batch writer waits for a moment without requests before it hashes the next piece anyway.
QUIET_WAIT_SECONDS = 0.002
#: Once the queue holds a batch (the writer is falling behind), the loop is offered only one pause in this
#: many: pieces of about 200 µs instead of 25 µs, so the queue drains even while requests never stop.
BEHIND_PAUSE_EVERY = 8
#: Event ids looked up at once when checking what is already in the log.
LOOKUP_CHUNK = 500


class BatchWriter:
    """Appends the event log's queue in batches and confirms them durable (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        appender: Appender,
        queue: deque[NewEvent],
        tallies: Tallies,
        *,
        batch_size: int,
        in_flight: InFlight | None,
        journal: Journal | None,
        spill_dir: Path | None,
    ) -> None:
        self.database = database
        self.appender = appender
        #: The event log's queue, shared: the log appends to its end, the writer takes from its front.
        self.queue = queue
        self.tallies = tallies
        self.batch_size = batch_size
        self.in_flight = in_flight
        self.journal = journal
        #: Where set-aside entries are kept with their error (None: nowhere).
        self.spill_dir = spill_dir
        #: Events whose last append failed with its outcome unknown (committed or not): checked by id first.
        self._doubtful: set[uuid.UUID] = set()
        #: Events appended, not yet known to be durable (``confirm``).
        self._unconfirmed: list[NewEvent] = []
        #: When the database server last confirmed durable had started (PostgreSQL), to tell a restart.
        self._epoch: datetime | None = None
        #: Entries of the batch being appended that were set aside rather than appended.
        self._set_aside_ids: set[uuid.UUID] = set()
        self._pauses = 0
        #: Since when (monotonic) every flush failed, and with what; None while appends succeed.
        self.failing_since: float | None = None
        self.last_error: str | None = None
        #: One flush at a time: a flush that found the queue empty while another's batch was still being
        #: appended would return before that batch is durable.
        self._flushing = asyncio.Lock()

    async def append_now(self, event: NewEvent) -> dict[str, Any]:
        """Append one event in a transaction of its own, durable when this returns; returns its entry."""
        (entry,) = await self.appender.append_now(event.tenant_id, [event])
        self.tallies.appended += 1
        return entry

    async def flush(self, *, everything: bool = False) -> int:
        """Append what is queued now (everything, also what arrives meanwhile, with ``everything``).

        Returns once what it appended is durable. Raises when the database cannot be reached; what was not
        durably appended stays queued, in order.
        """
        async with self._flushing:
            return await self._flush(everything)

    async def _flush(self, everything: bool) -> int:
        written = 0
        # Only what is queued now: events arriving meanwhile wait for the next tick, so steady traffic is
        # written in full batches rather than one tiny transaction after another.
        pending = len(self.queue)
        while True:
            try:
                while self.queue and (everything or written < pending):
                    size = min(self.batch_size, len(self.queue) if everything else pending - written)
                    batch = [self.queue.popleft() for _ in range(size)]
                    await self._append_batch(batch)
                    written += len(batch)
                    if not everything and written >= self.batch_size * 20:
                        break
            except Exception as error:
                await self.confirm(failed=error)
                raise
            await self.confirm()
            # A database that restarted meanwhile may have lost some: they are queued again.
            if not (everything and self.queue):
                return written

    def _failed(self, error: BaseException) -> None:
        self.tallies.flush_failures += 1
        self.last_error = printable(f"{type(error).__name__}: {error}", 300)
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    async def confirm(self, failed: BaseException | None = None) -> None:
        """Wait until the batches appended since the last call are durable, then let the journal release
        them; if that cannot be known, put them back at the front of the queue, to be checked by id."""
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        try:
            if failed is None and unconfirmed:
                epoch = await self.appender.flush_wal()
                if epoch != self._epoch:
                    # The database restarted (or another took over) since the last confirmation, perhaps
                    # after these committed without waiting for the WAL: what survived is found by id, the
                    # rest is queued again.
                    present = await self._present_among(unconfirmed)
                    self._epoch = epoch
                    missing = [event for event in unconfirmed if event.event_id not in present]
                    unconfirmed = [event for event in unconfirmed if event.event_id in present]
                    self.queue.extendleft(reversed(missing))
                    if missing:
                        log.warning("audit_appends_lost_by_the_database", count=len(missing))
        except BaseException as error:
            failed = error
            raise
        finally:
            if failed is None:
                self.failing_since = None
                self.release(event.event_id for event in unconfirmed)
            else:
                self._failed(failed)
                self._doubtful.update(event.event_id for event in unconfirmed)
                self.queue.extendleft(reversed(unconfirmed))

    async def _append_batch(self, batch: list[NewEvent]) -> None:
        """Append ``batch``, isolating entries the database refuses; on an outage (or cancellation) what
        was not appended goes back to the front of the queue, in order, and the error is raised.

        What it appended waits in ``_unconfirmed`` for ``confirm()``: on PostgreSQL a batch commits without
        waiting for the WAL flush, and one wait covers every batch of a flush.
        """
        by_tenant: dict[uuid.UUID, list[NewEvent]] = {}
        for event in batch:
            by_tenant.setdefault(event.tenant_id, []).append(event)
        written: set[uuid.UUID] = set()
        self._set_aside_ids.clear()
        try:
            if self._doubtful:
                await self._skip_present(by_tenant, written)
            outage = await self._append_groups(by_tenant, written)
        except BaseException:
            self._doubtful.update(event.event_id for event in batch if event.event_id not in written)
            raise
        finally:
            # Set aside (kept in the spill folder): done with. Appended: durable once confirmed.
            self.release(self._set_aside_ids)
            self._unconfirmed.extend(
                event
                for event in batch
                if event.event_id in written and event.event_id not in self._set_aside_ids
            )
            self.queue.extendleft(reversed([event for event in batch if event.event_id not in written]))
        if outage is not None:
            self._doubtful.update(event.event_id for event in batch if event.event_id not in written)
            raise outage

    async def _skip_present(
        self, by_tenant: dict[uuid.UUID, list[NewEvent]], written: set[uuid.UUID]
    ) -> None:
        # An earlier attempt at some of these failed on a connection that broke: its commit may have
        # happened anyway. What it did write is found by id (and confirmed with the rest), not written twice.
        for tenant_id, events in list(by_tenant.items()):
            doubtful = [event.event_id for event in events if event.event_id in self._doubtful]
            if not doubtful:
                continue
            present = await self.present(tenant_id, doubtful)
            self._doubtful.difference_update(doubtful)
            written.update(present)
            fresh = [event for event in events if event.event_id not in present]
            if fresh:
                by_tenant[tenant_id] = fresh
            else:
                del by_tenant[tenant_id]

    async def _present_among(self, events: Sequence[NewEvent]) -> set[uuid.UUID]:
        by_tenant: dict[uuid.UUID, list[uuid.UUID]] = {}
        for event in events:
            by_tenant.setdefault(event.tenant_id, []).append(event.event_id)
        present: set[uuid.UUID] = set()
        for tenant_id, event_ids in by_tenant.items():
            present |= await self.present(tenant_id, event_ids)
        return present

    async def _append_groups(
        self, by_tenant: dict[uuid.UUID, list[NewEvent]], written: set[uuid.UUID]
    ) -> BaseException | None:
        if not self.appender.parallel:
            # SQLite takes one writer at a time: everything is hashed and converted first, between
            # requests, and then inserted in one short transaction (others wait for the write lock meanwhile).
            try:
                await self.appender.append_batch(by_tenant, self.pause)
            except Exception as error:
                if is_outage(error):
                    return error
                # Something in the batch is refused: tenant by tenant, isolating it.
                for tenant_id, events in by_tenant.items():
                    outage = await self.append_isolating(tenant_id, events, written)
                    if outage is not None:
                        return outage
                return None
            for events in by_tenant.values():
                written.update(event.event_id for event in events)
                self.tallies.appended += len(events)
            return None
        # One transaction per tenant: it moves that tenant's head alone, so writers in other processes
        # append to other tenants meanwhile. Tenants are independent chains, so several are written at once:
        # the round trips of one overlap with the others' (one writer alone would mostly wait on them).
        slots = asyncio.Semaphore(PARALLEL_TENANTS)

        async def write(tenant_id: uuid.UUID, events: list[NewEvent]) -> BaseException | None:
            async with slots:
                return await self.append_isolating(tenant_id, events, written)

        outcomes = await asyncio.gather(
            *(write(tenant_id, events) for tenant_id, events in by_tenant.items())
        )
        return next((outcome for outcome in outcomes if outcome is not None), None)

    async def append_isolating(
        self, tenant_id: uuid.UUID, events: Sequence[NewEvent], written: set[uuid.UUID]
    ) -> BaseException | None:
        """Append one tenant's ``events`` in order; an entry the database refuses is set aside, found by
        halving the group (log2(n) rounds). Returns the error of an outage, which stops it."""
        try:
            await self.appender.append_batch({tenant_id: events}, self.pause)
        except Exception as error:
            if is_outage(error):
                return error
            if len(events) == 1:
                return await self._set_aside(events[0], error, written)
            middle = len(events) // 2
            return await self.append_isolating(
                tenant_id, events[:middle], written
            ) or await self.append_isolating(tenant_id, events[middle:], written)
        written.update(event.event_id for event in events)
        self.tallies.appended += len(events)
        return None

    async def _set_aside(
        self, event: NewEvent, error: Exception, written: set[uuid.UUID]
    ) -> BaseException | None:
        reason = printable(f"{type(error).__name__}: {error}", 500)
        self.tallies.set_aside += 1
        log.error(
            "audit_event_set_aside",
            tenant_id=str(event.tenant_id),
            event_id=str(event.event_id),
            error=reason,
        )
        kept = False
        if self.spill_dir is not None:
            try:
                spill.set_aside(self.spill_dir, event, reason)
                kept = True
            except OSError:
                log.exception("audit_set_aside_not_kept", spill_dir=str(self.spill_dir))
        # Handled from here on: it is never retried, whatever becomes of the record below.
        written.add(event.event_id)
        self._set_aside_ids.add(event.event_id)
        record = set_aside_event(event, reason, kept)
        try:
            await self.appender.append_batch({event.tenant_id: [record]}, self.pause)
        except Exception as again:
            if is_outage(again):
                self.queue.appendleft(record)
                return again
            log.exception("audit_set_aside_not_recorded", event_id=str(event.event_id))
            return None
        self.tallies.appended += 1
        return None

    async def present(self, tenant_id: uuid.UUID, event_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``event_ids`` the tenant's log holds."""
        present: set[uuid.UUID] = set()
        async with self.database.session(tenant_id) as session:
            for start in range(0, len(event_ids), LOOKUP_CHUNK):
                chunk = event_ids[start : start + LOOKUP_CHUNK]
                rows = await session.execute(
                    select(AuditEvent.event_id).where(
                        AuditEvent.tenant_id == tenant_id, AuditEvent.event_id.in_(chunk)
                    )
                )
                present.update(rows.scalars())
        return present

    async def pause(self) -> None:
        """Between two small pieces of a batch: the event loop's turn to serve requests."""
        # Let the loop serve I/O, then, unless the queue is falling behind, wait until no request is being
        # handled (a request then meets one piece, not one per await).
        # Falling behind, the writer takes longer pieces: with requests always ready, each turn of the loop
        # gives it one piece, and pieces of a few entries could not keep up with the checks that queue them.
        self._pauses += 1
        behind = len(self.queue) >= self.batch_size
        if behind and self._pauses % BEHIND_PAUSE_EVERY:
            return
        await asyncio.sleep(0)
        if not behind and self.in_flight is not None and self.in_flight.count:
            await self.in_flight.quiet(QUIET_WAIT_SECONDS)

    def release(self, event_ids: Iterable[uuid.UUID]) -> None:
        """Let the journal forget these events (durably in the log, in a spill file, or set aside)."""
        if self.journal is not None:
            for event_id in event_ids:
                self.journal.release(event_id)
