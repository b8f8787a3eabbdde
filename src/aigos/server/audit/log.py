"""The event log's one writer interface, used by every context.

- ``record(event, session)``: low-volume events, appended inside the caller's transaction (or a new one),
  durable before the request returns and atomic with the change they describe.
- ``enqueue(event)``: high-volume events (decisions, telemetry). It only enqueues; a background task appends
  in batches, per tenant, in one transaction each. When the queue is full (``AIGOS_AUDIT_QUEUE_SIZE``)
  the new event is dropped, counted, and the count itself is appended to the tenant's log as an
  ``audit.events_dropped`` event once there is room, so the loss is on the record. Allowed decisions
  may be aggregated into one ``policy.decisions_aggregated`` event per tenant and minute.
- A sealer signs a checkpoint for every tenant with new entries every ``AIGOS_AUDIT_CHECKPOINT_SECONDS``.

The batch writer never retries one batch forever and one tenant never holds back another: a batch the
database refuses is split until the entry it refuses is found; that entry is set aside (kept in the spill
folder with its error, counted, and recorded in its tenant's log as ``audit.event_set_aside``) and every
other entry is appended. While the database cannot be reached the queue is kept and retried with a growing
pause, and ``problem()`` tells readiness the writer is stuck. Graceful shutdown lets the current flush
finish, writes everything buffered, and spills to a file what the database will not take; the next start
replays spill files into the log (skipping what is already there), so nothing acknowledged is lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.signing import Signer, derive_seed
from aigos.server.audit import appender, checkpoints, spill
from aigos.server.audit.events import NewEvent
from aigos.server.audit.models import AuditEvent
from aigos.server.background import cancel
from aigos.server.db import Database
from aigos.server.db.outage import is_outage
from aigos.server.in_flight import InFlight

log = structlog.get_logger("aigos.audit")

AGGREGATED_TYPE = "policy.decisions_aggregated"
#: Tenants whose events one flush writes at the same time (each on its own connection).
PARALLEL_TENANTS = 4
DROPPED_TYPE = "audit.events_dropped"
#: How long the batch writer waits for a moment without requests before it hashes the next piece anyway.
QUIET_WAIT_SECONDS = 0.002
#: Once the queue holds a batch (the writer is falling behind), the loop is offered only one pause in this
#: many: pieces of about 200 µs instead of 25 µs, so the queue drains even while requests never stop.
BEHIND_PAUSE_EVERY = 8
SET_ASIDE_TYPE = "audit.event_set_aside"
REPLAYED_TYPE = "audit.events_replayed"
#: Failing this long without appending anything, the writer is reported stuck (readiness, metrics).
STALL_SECONDS = 5.0
#: The pause after a failed flush doubles from the first up to the last.
RETRY_PAUSE_SECONDS = (0.25, 5.0)
#: How long shutdown keeps trying to write what is queued before it spills the rest to disk.
SHUTDOWN_SECONDS = 10.0
#: Event ids looked up at once when a replay checks what is already in the log.
LOOKUP_CHUNK = 500


def _printable(text: str, limit: int) -> str:
    """``text`` with what the database refuses (NUL, lone surrogates) spelled out, cut to ``limit``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")[:limit]


def checkpoint_signer(pepper: bytes) -> Signer:
    """The Ed25519 key that signs checkpoints, derived from the server secret (same on every replica)."""
    return Signer.from_seed(derive_seed(pepper, "audit-checkpoint"))


class EventLog:
    """One process's handle on the tenant logs."""

    def __init__(
        self,
        database: Database,
        signer: Signer,
        *,
        queue_size: int = 100_000,
        batch_size: int = 1_000,
        flush_seconds: float = 0.2,
        checkpoint_seconds: float = 60.0,
        in_flight: InFlight | None = None,
        spill_dir: Path | None = None,
        shutdown_seconds: float = SHUTDOWN_SECONDS,
    ) -> None:
        self.database = database
        self.signer = signer
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.checkpoint_seconds = checkpoint_seconds
        self.in_flight = in_flight
        #: Where shutdown spills what it cannot write, and set-aside entries are kept (None: nowhere).
        self.spill_dir = spill_dir
        self.shutdown_seconds = shutdown_seconds
        self.stall_seconds = STALL_SECONDS
        self._queue: deque[NewEvent] = deque()
        self._aggregates: dict[tuple[uuid.UUID, str], Counter[str]] = {}
        self._dropped: Counter[uuid.UUID] = Counter()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pauses = 0
        self.heads = appender.Heads()
        self._stopping = asyncio.Event()
        #: Since when (monotonic) every flush failed, and with what; None while appends succeed.
        self._failing_since: float | None = None
        self.last_error: str | None = None
        self.appended_total = 0
        self.dropped_total = 0
        self.set_aside_total = 0
        self.spilled_total = 0
        self.replayed_total = 0
        self.flush_failures_total = 0

    # -- the writer interface -------------------------------------------------------------------

    async def record(self, event: NewEvent, session: AsyncSession | None = None) -> dict[str, Any]:
        """Append one event now; with ``session`` it commits (or rolls back) with the caller's transaction."""
        if session is not None:
            (entry,) = await appender.append(session, event.tenant_id, [event], self.heads)
        elif self.database.kind == "postgresql":
            (entry,) = await self._append_now(event.tenant_id, [event], batch=False)
        else:
            async with self.database.session() as own:
                (entry,) = await appender.append(own, event.tenant_id, [event], self.heads)
        self.appended_total += 1
        return entry

    async def record_many(
        self, tenant_id: uuid.UUID, events: Sequence[NewEvent], session: AsyncSession
    ) -> None:
        """Append several events of one tenant now, in one statement, with the caller's transaction."""
        await appender.append(session, tenant_id, events, self.heads)
        self.appended_total += len(events)

    async def _append_now(
        self, tenant_id: uuid.UUID, events: Sequence[NewEvent], *, batch: bool
    ) -> list[dict[str, Any]]:
        # PostgreSQL, in a transaction of its own: the append is one statement, sent outside any explicit
        # transaction (no BEGIN, no COMMIT round trips); only a writer that kept losing the race to other
        # processes opens one, to lock the head. A batch is committed without waiting for the WAL flush
        # (its events were only in memory a moment ago anyway), hashed in pieces between requests, and
        # returns no entries.
        async with self.database.driver() as driver:

            async def fetch(sql: str, args: tuple[Any, ...]) -> Any:
                return await driver.fetchrow(sql, *args)

            if not batch:
                return await appender.append_postgres(
                    fetch, tenant_id, events, self.heads, locking=driver.transaction
                )
            return await appender.append_postgres(
                fetch,
                tenant_id,
                events,
                self.heads,
                locking=driver.transaction,
                relaxed=True,
                pause=self._pause,
                entries=False,
            )

    async def _pause(self) -> None:
        # Between two small pieces of a batch: let the loop serve I/O, then, unless the queue is falling
        # behind, wait until no request is being handled (a request then meets one piece, not one per await).
        # Falling behind, the writer takes longer pieces: with requests always ready, each turn of the loop
        # gives it one piece, and pieces of a few entries could not keep up with the checks that queue them.
        self._pauses += 1
        behind = len(self._queue) >= self.batch_size
        if behind and self._pauses % BEHIND_PAUSE_EVERY:
            return
        await asyncio.sleep(0)
        if not behind and self.in_flight is not None and self.in_flight.count:
            await self.in_flight.quiet(QUIET_WAIT_SECONDS)

    def enqueue(self, event: NewEvent, *, aggregate_allowed: bool = False) -> bool:
        """Queue a high-volume event without waiting; False if it was dropped because the queue is full.

        With ``aggregate_allowed`` an allowed ``policy.checked`` only increments a per-minute count.
        """
        if aggregate_allowed and event.event_type == "policy.checked" and event.outcome == "allowed":
            minute = (event.occurred_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%MZ")
            self._aggregates.setdefault((event.tenant_id, minute), Counter())[event.agent_id or ""] += 1
            return True
        if len(self._queue) >= self.queue_size:
            self._dropped[event.tenant_id] += 1
            self.dropped_total += 1
            if self.dropped_total % 1000 == 1:
                log.warning("audit_queue_full", queue_size=self.queue_size, dropped_total=self.dropped_total)
            return False
        self._queue.append(event)
        if len(self._queue) >= self.batch_size:
            self._wake.set()
        return True

    @property
    def depth(self) -> int:
        """Events waiting in the queue."""
        return len(self._queue)

    # -- background work ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batch writer and the sealer."""
        if not self._tasks:
            self._stopping.clear()
            self._tasks = [
                asyncio.create_task(self._write_loop(), name="audit-writer"),
                asyncio.create_task(self._seal_loop(), name="audit-sealer"),
            ]

    async def stop(self) -> None:
        """Let the current flush finish, write everything buffered, spill what cannot be written, seal."""
        self._stopping.set()
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        writer = tasks[0] if tasks else None
        await cancel(*tasks[1:])
        if writer is not None:
            # Not cancelled mid-append: a statement cut off may or may not have committed.
            done, _ = await asyncio.wait({writer}, timeout=self.shutdown_seconds)
            if not done:
                await cancel(writer)
        await self._write_or_spill()
        try:
            await self.seal_all()
        except Exception:
            log.exception("audit_final_seal_failed")

    async def _write_or_spill(self) -> None:
        deadline = time.monotonic() + self.shutdown_seconds
        while True:
            try:
                await self.flush(everything=True)
                return
            except Exception as error:
                if time.monotonic() >= deadline:
                    log.error("audit_final_flush_failed", depth=self.depth, error=repr(error))
                    break
                await asyncio.sleep(RETRY_PAUSE_SECONDS[0])
        self._drain_aggregates(True)
        self._drain_dropped()
        pending = list(self._queue)
        if not pending:
            return
        if self.spill_dir is not None:
            try:
                path = spill.spill(self.spill_dir, pending)
            except OSError:
                log.exception("audit_spill_failed", spill_dir=str(self.spill_dir))
            else:
                self._queue.clear()
                self.spilled_total += len(pending)
                log.error("audit_events_spilled", count=len(pending), path=str(path))
                return
        log.critical("audit_events_lost", count=len(pending), reason="no database and no spill folder")

    async def flush(self, *, everything: bool = False) -> int:
        """Append what is queued (and aggregates of finished minutes; all of them with ``everything``).

        Raises when the database cannot be reached; what was not appended stays queued, in order.
        """
        self._drain_aggregates(everything)
        self._drain_dropped()
        written = 0
        # Only what is queued now: events arriving meanwhile wait for the next tick, so steady traffic is
        # written in full batches rather than one tiny transaction after another.
        pending = len(self._queue)
        while self._queue and (everything or written < pending):
            size = min(self.batch_size, len(self._queue) if everything else pending - written)
            batch = [self._queue.popleft() for _ in range(size)]
            try:
                await self._append_batch(batch)
            except Exception as error:
                self.flush_failures_total += 1
                self.last_error = _printable(f"{type(error).__name__}: {error}", 300)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                raise
            self._failing_since = None
            written += len(batch)
            if not everything and written >= self.batch_size * 20:
                break
        return written

    def problem(self) -> str | None:
        """Why the batch writer cannot make progress, or None when it can (readiness asks this)."""
        writer = self._tasks[0] if self._tasks else None
        if writer is not None and writer.done():
            return "the event-log writer has stopped"
        since = self._failing_since
        if since is not None and time.monotonic() - since >= self.stall_seconds:
            return (
                f"the event log has appended nothing for {time.monotonic() - since:.0f} s: {self.last_error}"
            )
        return None

    @property
    def stalled(self) -> bool:
        """Whether ``problem()`` reports one."""
        return self.problem() is not None

    async def seal_all(self) -> int:
        """Sign a checkpoint for every tenant with unsealed entries; returns how many were sealed."""
        async with self.database.session() as session:
            tenants = await checkpoints.unsealed_tenants(session)
        for tenant_id in tenants:
            async with self.database.session() as session:
                await checkpoints.seal(session, self.signer, tenant_id)
        return len(tenants)

    # -- appending a batch ----------------------------------------------------------------------

    async def _append_batch(self, batch: list[NewEvent]) -> None:
        """Append ``batch``, isolating entries the database refuses; on an outage (or cancellation) what
        was not appended goes back to the front of the queue, in order, and the error is raised."""
        by_tenant: dict[uuid.UUID, list[NewEvent]] = {}
        for event in batch:
            by_tenant.setdefault(event.tenant_id, []).append(event)
        written: set[uuid.UUID] = set()
        try:
            outage = await self._append_groups(by_tenant, written)
        except BaseException:
            self._queue.extendleft(reversed([event for event in batch if event.event_id not in written]))
            raise
        if outage is not None:
            self._queue.extendleft(reversed([event for event in batch if event.event_id not in written]))
            raise outage

    async def _append_groups(
        self, by_tenant: dict[uuid.UUID, list[NewEvent]], written: set[uuid.UUID]
    ) -> BaseException | None:
        if self.database.kind == "sqlite":
            # SQLite takes one writer at a time: everything is hashed and converted first, between
            # requests, and then inserted in one short transaction (others wait for the write lock meanwhile).
            try:
                await self._append_sqlite(by_tenant)
            except Exception as error:
                if is_outage(error):
                    return error
                # Something in the batch is refused: tenant by tenant, isolating it.
                for tenant_id, events in by_tenant.items():
                    outage = await self._append_isolating(tenant_id, events, written)
                    if outage is not None:
                        return outage
                return None
            for events in by_tenant.values():
                written.update(event.event_id for event in events)
                self.appended_total += len(events)
            return None
        # One transaction per tenant: it moves that tenant's head alone, so writers in other processes
        # append to other tenants meanwhile. Tenants are independent chains, so several are written at once:
        # the round trips of one overlap with the others' (one writer alone would mostly wait on them).
        slots = asyncio.Semaphore(PARALLEL_TENANTS)

        async def write(tenant_id: uuid.UUID, events: list[NewEvent]) -> BaseException | None:
            async with slots:
                return await self._append_isolating(tenant_id, events, written)

        outcomes = await asyncio.gather(
            *(write(tenant_id, events) for tenant_id, events in by_tenant.items())
        )
        return next((outcome for outcome in outcomes if outcome is not None), None)

    async def _append_sqlite(self, by_tenant: dict[uuid.UUID, list[NewEvent]]) -> None:
        dialect = self.database.engine.dialect
        prepared = [
            await appender.prepare_sqlite(
                dialect, tenant_id, events, self.heads, pause=self._pause, entries=False
            )
            for tenant_id, events in by_tenant.items()
        ]
        async with self.database.session() as session:
            for item in prepared:
                await appender.append_sqlite(session, item, self.heads)

    async def _append_group(self, tenant_id: uuid.UUID, events: Sequence[NewEvent]) -> None:
        if self.database.kind == "sqlite":
            await self._append_sqlite({tenant_id: list(events)})
        else:
            await self._append_now(tenant_id, events, batch=True)

    async def _append_isolating(
        self, tenant_id: uuid.UUID, events: Sequence[NewEvent], written: set[uuid.UUID]
    ) -> BaseException | None:
        """Append one tenant's ``events`` in order; an entry the database refuses is set aside, found by
        halving the group (log2(n) rounds). Returns the error of an outage, which stops it."""
        try:
            await self._append_group(tenant_id, events)
        except Exception as error:
            if is_outage(error):
                return error
            if len(events) == 1:
                return await self._set_aside(events[0], error, written)
            middle = len(events) // 2
            return await self._append_isolating(
                tenant_id, events[:middle], written
            ) or await self._append_isolating(tenant_id, events[middle:], written)
        written.update(event.event_id for event in events)
        self.appended_total += len(events)
        return None

    async def _set_aside(
        self, event: NewEvent, error: Exception, written: set[uuid.UUID]
    ) -> BaseException | None:
        reason = _printable(f"{type(error).__name__}: {error}", 500)
        self.set_aside_total += 1
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
        record = NewEvent(
            tenant_id=event.tenant_id,
            event_type=SET_ASIDE_TYPE,
            actor_type="system",
            actor_id="audit",
            outcome="failure",
            data={
                "event_id": str(event.event_id),
                "event_type": _printable(event.event_type, 100),
                "error": reason,
                "kept": kept,
            },
        )
        try:
            await self._append_group(event.tenant_id, [record])
        except Exception as again:
            if is_outage(again):
                self._queue.appendleft(record)
                return again
            log.exception("audit_set_aside_not_recorded", event_id=str(event.event_id))
            return None
        self.appended_total += 1
        return None

    # -- spill files ------------------------------------------------------------------------------

    async def replay_spilled(self) -> int:
        """Append the events of spill files left by earlier processes; returns how many were appended.

        Events already in the log (a replay cut short) are skipped by id; each tenant's log then records
        ``audit.events_replayed``. A file is removed once all of it is in the log; raises (keeping the
        file for the next start) if the database cannot take it.
        """
        if self.spill_dir is None:
            return 0
        appended = 0
        for path in spill.claim(self.spill_dir):
            events = spill.read(path)
            by_tenant: dict[uuid.UUID, list[NewEvent]] = {}
            for event in events:
                by_tenant.setdefault(event.tenant_id, []).append(event)
            for tenant_id, group in by_tenant.items():
                present = await self._present(tenant_id, [event.event_id for event in group])
                fresh = [event for event in group if event.event_id not in present]
                written: set[uuid.UUID] = set()
                for start in range(0, len(fresh), self.batch_size):
                    outage = await self._append_isolating(
                        tenant_id, fresh[start : start + self.batch_size], written
                    )
                    if outage is not None:
                        raise outage
                replayed = NewEvent(
                    tenant_id=tenant_id,
                    event_type=REPLAYED_TYPE,
                    actor_type="system",
                    actor_id="audit",
                    data={"count": len(fresh), "already_present": len(group) - len(fresh), "file": path.name},
                )
                await self.record(replayed)
                appended += len(fresh)
            path.unlink()
            log.warning("audit_spill_replayed", path=str(path), events=len(events))
        self.replayed_total += appended
        return appended

    async def _present(self, tenant_id: uuid.UUID, event_ids: list[uuid.UUID]) -> set[uuid.UUID]:
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

    def _drain_aggregates(self, everything: bool) -> None:
        current = datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")
        for key in [key for key in self._aggregates if everything or key[1] < current]:
            tenant_id, minute = key
            counts = self._aggregates.pop(key)
            self._queue.append(
                NewEvent(
                    tenant_id=tenant_id,
                    event_type=AGGREGATED_TYPE,
                    actor_type="system",
                    actor_id="policy",
                    outcome="allowed",
                    data={"minute": minute, "count": sum(counts.values()), "by_agent": dict(counts)},
                )
            )

    def _drain_dropped(self) -> None:
        for tenant_id, count in list(self._dropped.items()):
            del self._dropped[tenant_id]
            self._queue.append(
                NewEvent(
                    tenant_id=tenant_id,
                    event_type=DROPPED_TYPE,
                    actor_type="system",
                    actor_id="audit",
                    outcome="failure",
                    data={"count": count, "reason": "queue full"},
                )
            )

    async def _write_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                await self.flush()
                failures = 0
            except Exception:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.exception("audit_flush_failed", depth=self.depth, failures=failures)
                first, most = RETRY_PAUSE_SECONDS
                # Not woken by a full queue meanwhile (it stays full during an outage); only by stop().
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(most, first * 2 ** (failures - 1)))

    async def _seal_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_seconds)
            try:
                await self.seal_all()
            except Exception:
                log.exception("audit_seal_failed")
