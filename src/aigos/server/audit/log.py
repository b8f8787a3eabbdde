"""The event log's one writer interface, used by every context.

- ``record(event, session)``: low-volume events, appended inside the caller's transaction (or a new one),
  durable before the request returns and atomic with the change they describe.
- ``enqueue(event)``: high-volume events (decisions, telemetry). It writes the event to this process's
  journal on local disk (``journal.py``) and queues it; a background task appends in batches, per tenant,
  in one transaction each, and releases the journal's copy once that commit is durable. A process killed
  before then leaves its journal behind, and the next start replays it. When the queue is full
  (``AIGOS_AUDIT_QUEUE_SIZE``) or the journal cannot be written, the new event is dropped, counted, and the
  count itself is appended to the tenant's log as an ``audit.events_dropped`` event, so the loss is on the
  record. Allowed decisions may be aggregated into one ``policy.decisions_aggregated`` event per tenant and
  minute (each decision is journaled, compactly). ``enqueue_many(events)``, for callers that can retry
  (agents reporting telemetry), answers 503 ``STORAGE_UNAVAILABLE`` instead when the journal fails.
- A sealer signs a checkpoint for every tenant with new entries every ``AIGOS_AUDIT_CHECKPOINT_SECONDS``.

The batch writer never retries one batch forever and one tenant never holds back another: a batch the
database refuses is split until the entry it refuses is found; that entry is set aside (kept in the spill
folder with its error, counted, and recorded in its tenant's log as ``audit.event_set_aside``) and every
other entry is appended. While the database cannot be reached the queue is kept and retried with a growing
pause, and ``problem()`` tells readiness the writer is stuck. Graceful shutdown lets the current flush
finish, writes everything buffered, and spills to a file what the database will not take; the next start
replays spill files and the journals of processes that are gone into the log (skipping what is already
there), and records what a journal held but cannot give back (``audit.events_lost``), so nothing
acknowledged is lost silently. ``docs/event-log.md`` states the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.signing import Signer, derive_seed
from aigos.server.audit import appender, checkpoints, journal, spill
from aigos.server.audit.events import NewEvent
from aigos.server.audit.journal import Bucket, Journal, decision_record, drop_record, event_record
from aigos.server.audit.models import AuditEvent
from aigos.server.background import cancel
from aigos.server.db import Database
from aigos.server.db.outage import is_outage
from aigos.server.errors import ServiceUnavailable
from aigos.server.in_flight import InFlight

log = structlog.get_logger("aigos.audit")

AGGREGATED_TYPE = "policy.decisions_aggregated"
#: Tenants whose events one flush writes at the same time (each on its own connection).
PARALLEL_TENANTS = 4
DROPPED_TYPE = "audit.events_dropped"
LOST_TYPE = "audit.events_lost"
#: Why an event was dropped (the ``reason`` of its ``audit.events_dropped`` entry).
QUEUE_FULL = "queue full"
UNJOURNALED = "journal unavailable"
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
#: How often (seconds) a running process looks for journals of processes that died beside it.
CLAIM_SECONDS = 30.0
#: A transaction that writes a WAL record of its own and commits durably. Taking a transaction id is not
#: enough: PostgreSQL commits a transaction that wrote nothing else without flushing, whatever
#: ``synchronous_commit`` says (``RecordTransactionCommit``'s ``wrote_xlog``).
_FLUSH_WAL_SQL = (
    "SELECT set_config('synchronous_commit', 'on', true),"
    " pg_logical_emit_message(true, 'aigos.audit.flush', ''), pg_postmaster_start_time()"
)
#: Loss records get ids derived from where the loss is, so a replay done twice records it once.
_LOSS_IDS = uuid.UUID("5b0c3f9e-6d1a-4f7e-9a51-3c2b8e0d7a14")


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
        journal_dir: Path | None = None,
        journal_sync_seconds: float = 1.0,
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
        #: Where journals live (this process's, and those of processes that are gone); None: no journal.
        self.journal_dir = journal_dir
        self.journal = Journal(journal_dir) if journal_dir is not None else None
        self.journal_sync_seconds = journal_sync_seconds
        self._queue: deque[NewEvent] = deque()
        self._aggregates: dict[tuple[uuid.UUID, str], Bucket] = {}
        self._dropped: dict[tuple[uuid.UUID, str], Bucket] = {}
        self._minute_number = -1
        self._minute_text = ""
        #: Events whose last append failed with its outcome unknown (committed or not): checked by id first.
        self._doubtful: set[uuid.UUID] = set()
        #: Events appended, not yet known to be durable (``_confirm``).
        self._unconfirmed: list[NewEvent] = []
        #: When the database server last confirmed durable had started (PostgreSQL), to tell a restart.
        self._epoch: datetime | None = None
        #: Entries of the batch being appended that were set aside rather than appended.
        self._set_aside_ids: set[uuid.UUID] = set()
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
        self.lost_total = 0
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
        # processes opens one, to lock the head. A batch is hashed in pieces between requests, returns no
        # entries, and commits without waiting for the WAL flush: one flush per batch, not one per tenant,
        # is awaited before the journal lets its events go (``_confirm``).
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
        """Journal and queue a high-volume event without waiting; False if it was dropped (and counted)
        because the queue is full or the journal cannot be written.

        With ``aggregate_allowed`` an allowed ``policy.checked`` only increments a per-minute count.
        """
        own = self.journal
        if aggregate_allowed and event.event_type == "policy.checked" and event.outcome == "allowed":
            minute = self._this_minute() if event.occurred_at is None else _minute_of(event.occurred_at)
            key = (event.tenant_id, minute)
            bucket = self._aggregates.get(key)
            if bucket is None:
                bucket = self._aggregates[key] = Bucket(event.tenant_id, minute)
            agent = event.agent_id or ""
            if own is not None:
                try:
                    own.count(decision_record(bucket, agent), bucket.event_id)
                except OSError:
                    self._drop(event.tenant_id, UNJOURNALED)
                    return False
            bucket.counts[agent] += 1
            return True
        if len(self._queue) >= self.queue_size:
            self._drop(event.tenant_id, QUEUE_FULL)
            return False
        if own is not None:
            try:
                own.write(event_record(event), event.event_id)
            except OSError:
                self._drop(event.tenant_id, UNJOURNALED)
                return False
        self._queue.append(event)
        if len(self._queue) >= self.batch_size:
            self._wake.set()
        return True

    def enqueue_many(self, events: Sequence[NewEvent]) -> int:
        """Journal (in one write) and queue events a caller can send again; returns how many were queued,
        the rest dropped and counted because the queue is full.

        Raises ``ServiceUnavailable`` (503 ``STORAGE_UNAVAILABLE``) and keeps none of them if the journal
        cannot be written: the caller has decided nothing yet and can retry.
        """
        room = max(self.queue_size - len(self._queue), 0)
        kept = list(events[:room])
        if kept and self.journal is not None:
            try:
                self.journal.write_many(
                    b"".join(event_record(event) for event in kept), [event.event_id for event in kept]
                )
            except OSError as error:
                raise ServiceUnavailable(
                    "The event log cannot keep events now: its journal on local disk cannot be written. "
                    "Nothing was kept; retry later.",
                    code="STORAGE_UNAVAILABLE",
                    headers={"Retry-After": "5"},
                    dependency="disk",
                ) from error
        for event in events[room:]:
            self._drop(event.tenant_id, QUEUE_FULL)
        self._queue.extend(kept)
        if len(self._queue) >= self.batch_size:
            self._wake.set()
        return len(kept)

    def _drop(self, tenant_id: uuid.UUID, reason: str) -> None:
        key = (tenant_id, reason)
        bucket = self._dropped.get(key)
        if bucket is None:
            bucket = self._dropped[key] = Bucket(tenant_id, reason)
        if reason != UNJOURNALED and self.journal is not None:
            # The count is journaled too: a crash must not make the loss silent. If this write fails as
            # well, the count is still kept in memory.
            with contextlib.suppress(OSError):
                self.journal.count(drop_record(bucket), bucket.event_id)
        bucket.counts[""] += 1
        self.dropped_total += 1
        if self.dropped_total % 1000 == 1:
            log.warning("audit_events_dropped", reason=reason, dropped_total=self.dropped_total)

    @property
    def depth(self) -> int:
        """Events waiting in the queue."""
        return len(self._queue)

    # -- background work ------------------------------------------------------------------------

    def start(self) -> None:
        """Open the journal; start the batch writer, the sealer and the journal's upkeep."""
        if not self._tasks:
            self._stopping.clear()
            if self.journal is not None:
                self.journal.open()
            self._tasks = [
                asyncio.create_task(self._write_loop(), name="audit-writer"),
                asyncio.create_task(self._seal_loop(), name="audit-sealer"),
            ]
            if self.journal is not None:
                self._tasks.append(asyncio.create_task(self._journal_loop(), name="audit-journal"))

    async def stop(self) -> None:
        """Let the current flush finish, write everything buffered, spill what cannot be written, seal.

        The journal is deleted once everything in it is in the log or a spill file; otherwise it is left
        for the next start to replay.
        """
        self._stopping.set()
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        writer = tasks[0] if tasks else None
        upkeep = tasks[2] if len(tasks) > 2 else None
        await cancel(*tasks[1:2])
        for task in (writer, upkeep):
            if task is not None:
                # Not cancelled mid-append (a statement cut off may or may not have committed) nor mid-fsync.
                done, _ = await asyncio.wait({task}, timeout=self.shutdown_seconds)
                if not done:
                    await cancel(task)
        await self._write_or_spill()
        if self.journal is not None:
            held = self.journal.held
            if held:
                log.error("audit_journal_kept", records=held, path=str(self.journal.path))
            self.journal.close(remove=not held)
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
                self._release(event.event_id for event in pending)
                self.spilled_total += len(pending)
                log.error("audit_events_spilled", count=len(pending), path=str(path))
                return
        if self.journal is not None and self.journal.error is None:
            # Still held by the journal, which stays for the next start to replay.
            log.error("audit_events_left_in_journal", count=len(pending), path=str(self.journal.path))
            return
        log.critical("audit_events_lost", count=len(pending), reason="no database, spill folder or journal")

    async def flush(self, *, everything: bool = False) -> int:
        """Append what is queued (and aggregates of finished minutes; all of them with ``everything``).

        Returns once what it appended is durable. Raises when the database cannot be reached; what was not
        durably appended stays queued, in order.
        """
        self._drain_aggregates(everything)
        self._drain_dropped()
        written = 0
        # Only what is queued now: events arriving meanwhile wait for the next tick, so steady traffic is
        # written in full batches rather than one tiny transaction after another.
        pending = len(self._queue)
        while True:
            try:
                while self._queue and (everything or written < pending):
                    size = min(self.batch_size, len(self._queue) if everything else pending - written)
                    batch = [self._queue.popleft() for _ in range(size)]
                    await self._append_batch(batch)
                    written += len(batch)
                    if not everything and written >= self.batch_size * 20:
                        break
            except Exception as error:
                await self._confirm(failed=error)
                raise
            await self._confirm()
            # A database that restarted meanwhile may have lost some: they are queued again.
            if not (everything and self._queue):
                return written

    def _failed(self, error: BaseException) -> None:
        self.flush_failures_total += 1
        self.last_error = _printable(f"{type(error).__name__}: {error}", 300)
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    async def _confirm(self, failed: BaseException | None = None) -> None:
        """Wait until the batches appended since the last call are durable, then let the journal release
        them; if that cannot be known, put them back at the front of the queue, to be checked by id."""
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        try:
            if failed is None and unconfirmed:
                epoch = await self._flush_wal()
                if epoch != self._epoch:
                    # The database restarted (or another took over) since the last confirmation, perhaps
                    # after these committed without waiting for the WAL: what survived is found by id, the
                    # rest is queued again.
                    present = await self._present_among(unconfirmed)
                    self._epoch = epoch
                    missing = [event for event in unconfirmed if event.event_id not in present]
                    unconfirmed = [event for event in unconfirmed if event.event_id in present]
                    self._queue.extendleft(reversed(missing))
                    if missing:
                        log.warning("audit_appends_lost_by_the_database", count=len(missing))
        except BaseException as error:
            failed = error
            raise
        finally:
            if failed is None:
                self._failing_since = None
                self._release(event.event_id for event in unconfirmed)
            else:
                self._failed(failed)
                self._doubtful.update(event.event_id for event in unconfirmed)
                self._queue.extendleft(reversed(unconfirmed))

    def problem(self) -> str | None:
        """Why the batch writer cannot make progress or the journal cannot keep events, or None when all is
        well (readiness asks this)."""
        writer = self._tasks[0] if self._tasks else None
        if writer is not None and writer.done():
            return "the event-log writer has stopped"
        if self.journal is not None and self.journal.error is not None:
            return f"the event-log journal cannot be written: {self.journal.error}"
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
        was not appended goes back to the front of the queue, in order, and the error is raised.

        What it appended waits in ``_unconfirmed`` for ``_confirm()``: on PostgreSQL a batch commits without
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
            self._release(self._set_aside_ids)
            self._unconfirmed.extend(
                event
                for event in batch
                if event.event_id in written and event.event_id not in self._set_aside_ids
            )
            self._queue.extendleft(reversed([event for event in batch if event.event_id not in written]))
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
            present = await self._present(tenant_id, doubtful)
            self._doubtful.difference_update(doubtful)
            written.update(present)
            fresh = [event for event in events if event.event_id not in present]
            if fresh:
                by_tenant[tenant_id] = fresh
            else:
                del by_tenant[tenant_id]

    async def _flush_wal(self) -> datetime | None:
        """Wait until what this process committed so far is durable (PostgreSQL; SQLite's commits are);
        returns when the database server started, which tells a restart in between.

        A batch commits without waiting for the WAL flush; a transaction that writes a WAL record (a
        logical message, read by nobody) commits with ``synchronous_commit`` on, and its commit record
        follows every earlier one in the WAL, so once it returns they are all flushed too: unless the
        server restarted since they committed, and lost them.
        """
        if self.database.kind != "postgresql":
            return None
        async with self.database.driver() as driver:
            row = await driver.fetchrow(_FLUSH_WAL_SQL)
        started: datetime = row[2]
        return started

    async def _present_among(self, events: Sequence[NewEvent]) -> set[uuid.UUID]:
        by_tenant: dict[uuid.UUID, list[uuid.UUID]] = {}
        for event in events:
            by_tenant.setdefault(event.tenant_id, []).append(event.event_id)
        present: set[uuid.UUID] = set()
        for tenant_id, event_ids in by_tenant.items():
            present |= await self._present(tenant_id, event_ids)
        return present

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
        self._set_aside_ids.add(event.event_id)
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

    # -- what earlier processes left: spill files and journals ----------------------------------------

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
            appended += await self._replay(events, {"file": path.name})
            path.unlink()
            log.warning("audit_spill_replayed", path=str(path), events=len(events))
        return appended

    async def replay_journals(self) -> int:
        """Append what the journals of processes that are gone hold and the log does not; returns how many
        entries were appended.

        A journal whose process still runs is locked and left alone. Unreadable lines become
        ``audit.events_lost`` entries in the tenant they name (in the system log, tenant ``0…0``, when they
        name none). A journal is removed once all of it is in the log; raises (leaving it for a later
        attempt) if the database cannot take it.
        """
        if self.journal_dir is None:
            return 0
        appended = 0
        orphans = journal.claim(self.journal_dir)
        try:
            for orphan in orphans:
                appended += await self._replay_journal(orphan)
                orphan.remove()
        finally:
            # Those not replayed (the database failed) stay for a later attempt, by this process or another.
            for orphan in orphans:
                orphan.release()
        return appended

    async def _replay_journal(self, orphan: journal.Orphan) -> int:
        events: list[NewEvent] = []
        decisions: dict[uuid.UUID, Bucket] = {}
        dropped: dict[uuid.UUID, Bucket] = {}
        losses: list[NewEvent] = []
        for path in orphan.segments():
            contents = journal.read(path)
            events.extend(contents.events)
            # A bucket's records may span segments: counted together, as the live process counted them.
            for into, found in ((decisions, contents.decisions), (dropped, contents.dropped)):
                for bucket_id, bucket in found.items():
                    into.setdefault(bucket_id, Bucket(bucket.tenant_id, bucket.label, event_id=bucket_id))
                    into[bucket_id].counts.update(bucket.counts)
            losses.extend(self._loss_event(orphan.owner, loss) for loss in contents.losses)
        events.extend(_aggregated_event(bucket) for bucket in decisions.values())
        events.extend(_dropped_event(bucket) for bucket in dropped.values())
        events.extend(losses)
        appended = await self._replay(events, {"journal": orphan.owner})
        self.lost_total += sum(int(event.data["count"]) for event in losses)
        log.warning(
            "audit_journal_replayed",
            process=orphan.owner,
            records=len(events),
            appended=appended,
            losses=len(losses),
        )
        return appended

    def _loss_event(self, owner: str, loss: journal.Loss) -> NewEvent:
        log.error(
            "audit_journal_unreadable",
            process=owner,
            segment=loss.segment,
            offset=loss.offset,
            lines=loss.lines,
            bytes=loss.bytes,
        )
        return NewEvent(
            tenant_id=loss.tenant_id or journal.SYSTEM_TENANT,
            event_type=LOST_TYPE,
            actor_type="system",
            actor_id="audit",
            outcome="failure",
            data={
                # Each unreadable line held one record or more (a region of zeros may have held several).
                "count": loss.lines,
                "bytes": loss.bytes,
                "process": owner,
                "file": loss.segment,
                "offset": loss.offset,
                "from": loss.after,
                "to": loss.before,
                "reason": "unreadable journal lines (a write torn by a crash, or a damaged disk)",
            },
            event_id=uuid.uuid5(_LOSS_IDS, f"{owner}/{loss.segment}/{loss.offset}"),
        )

    async def _replay(self, events: Sequence[NewEvent], origin: dict[str, str]) -> int:
        """Append those of ``events`` (left by an earlier process) the log does not hold yet, in order per
        tenant, then record ``audit.events_replayed`` (with ``origin``) in each tenant's log; returns how
        many were appended. Raises on an outage, leaving the rest for another attempt."""
        by_tenant: dict[uuid.UUID, list[NewEvent]] = {}
        for event in events:
            by_tenant.setdefault(event.tenant_id, []).append(event)
        epoch = await self._flush_wal()
        appended = 0
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
                data={"count": len(fresh), "already_present": len(group) - len(fresh), **origin},
            )
            await self.record(replayed)
            appended += len(fresh)
        if await self._flush_wal() != epoch:
            # Appended without waiting for the WAL, and the server restarted since: some may be gone. The
            # source is kept, and replayed again (what is there is skipped) by a later attempt.
            raise RuntimeError("the database restarted during the replay")
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

    def _this_minute(self) -> str:
        # Formatted once a minute, not per decision (the check path calls this).
        now = int(time.time()) // 60
        if now != self._minute_number:
            self._minute_number = now
            self._minute_text = _minute_of(datetime.fromtimestamp(now * 60, UTC))
        return self._minute_text

    def _drain_aggregates(self, everything: bool) -> None:
        current = _minute_of(datetime.now(UTC))
        for key in [key for key in self._aggregates if everything or key[1] < current]:
            bucket = self._aggregates.pop(key)
            if bucket.counts:
                self._queue.append(_aggregated_event(bucket))

    def _drain_dropped(self) -> None:
        for key in list(self._dropped):
            self._queue.append(_dropped_event(self._dropped.pop(key)))

    def _release(self, event_ids: Iterable[uuid.UUID]) -> None:
        if self.journal is not None:
            for event_id in event_ids:
                self.journal.release(event_id)

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

    async def _journal_loop(self) -> None:
        # fsync in groups, rotate segments, and now and then take over the journal of a process that died
        # beside this one (a worker killed and not restarted). Left between two rounds at stop().
        assert self.journal is not None
        claimed_at = time.monotonic()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.journal_sync_seconds)
            await self.journal.maintain()
            if not self._stopping.is_set() and time.monotonic() - claimed_at >= CLAIM_SECONDS:
                claimed_at = time.monotonic()
                try:
                    await self.replay_journals()
                except Exception:
                    log.exception("audit_journal_replay_failed")


def _minute_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _aggregated_event(bucket: Bucket) -> NewEvent:
    return NewEvent(
        tenant_id=bucket.tenant_id,
        event_type=AGGREGATED_TYPE,
        actor_type="system",
        actor_id="policy",
        outcome="allowed",
        data={"minute": bucket.label, "count": sum(bucket.counts.values()), "by_agent": dict(bucket.counts)},
        event_id=bucket.event_id,
    )


def _dropped_event(bucket: Bucket) -> NewEvent:
    return NewEvent(
        tenant_id=bucket.tenant_id,
        event_type=DROPPED_TYPE,
        actor_type="system",
        actor_id="audit",
        outcome="failure",
        data={"count": sum(bucket.counts.values()), "reason": bucket.label},
        event_id=bucket.event_id,
    )
