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

The batch writer (``writer.py``) never retries one batch forever and one tenant never holds back another:
an entry the database refuses is set aside (``audit.event_set_aside``); while the database cannot be reached
the queue is kept and retried with a growing pause, and ``problem()`` tells readiness the writer is stuck.
Graceful shutdown lets the current flush finish, writes everything buffered, and spills to a file what the
database will not take; the next start replays spill files and the journals of processes that are gone
(``replay.py``), so nothing acknowledged is lost silently. ``docs/event-log.md`` states the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.signing import Signer, derive_seed
from aigos.server.audit import appender, checkpoints, spill
from aigos.server.audit.chain import Heads
from aigos.server.audit.events import NewEvent
from aigos.server.audit.journal import Bucket, Journal, decision_record, drop_record, event_record
from aigos.server.audit.records import (
    QUEUE_FULL,
    UNJOURNALED,
    Tallies,
    aggregated_event,
    dropped_event,
    minute_of,
)
from aigos.server.audit.replay import Replay
from aigos.server.audit.writer import BatchWriter
from aigos.server.background import cancel
from aigos.server.db import Database
from aigos.server.errors import ServiceUnavailable
from aigos.server.in_flight import InFlight

log = structlog.get_logger("aigos.audit")

#: Failing this long without appending anything, the writer is reported stuck (readiness, metrics).
STALL_SECONDS = 5.0
#: The pause after a failed flush doubles from the first up to the last.
RETRY_PAUSE_SECONDS = (0.25, 5.0)
#: How long shutdown keeps trying to write what is queued before it spills the rest to disk.
SHUTDOWN_SECONDS = 10.0
#: How often (seconds) a running process looks for journals of processes that died beside it.
CLAIM_SECONDS = 30.0


def checkpoint_signer(pepper: bytes) -> Signer:
    """The Ed25519 key that signs checkpoints, derived from the server secret (same on every replica)."""
    return Signer.from_seed(derive_seed(pepper, "audit-checkpoint"))


class EventLog:
    """One process's handle on the tenant logs.

    It takes events in (``record``, ``enqueue``), counts allowed decisions and drops, and runs the
    background work; the batch writer (``writer.py``) appends what is queued, ``replay.py`` brings in what
    earlier processes left, and ``records.py`` builds what the log records about itself.
    """

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
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.heads = Heads()
        self._stopping = asyncio.Event()
        #: What this log did since the process started (the ``aigos_eventlog_*`` metrics).
        self.tallies = Tallies()
        self.writer = BatchWriter(
            database,
            appender.create(database, self.heads),
            self._queue,
            self.tallies,
            batch_size=batch_size,
            in_flight=in_flight,
            journal=self.journal,
            spill_dir=spill_dir,
        )
        self._replay = Replay(self.writer, self.tallies, spill_dir=spill_dir, journal_dir=journal_dir)

    # -- the writer interface -------------------------------------------------------------------

    async def record(self, event: NewEvent, session: AsyncSession | None = None) -> dict[str, Any]:
        """Append one event now; with ``session`` it commits (or rolls back) with the caller's transaction."""
        if session is None:
            return await self.writer.append_now(event)
        (entry,) = await appender.append(session, event.tenant_id, [event], self.heads)
        self.tallies.appended += 1
        return entry

    async def record_many(
        self, tenant_id: uuid.UUID, events: Sequence[NewEvent], session: AsyncSession
    ) -> None:
        """Append several events of one tenant now, in one statement, with the caller's transaction."""
        await appender.append(session, tenant_id, events, self.heads)
        self.tallies.appended += len(events)

    def enqueue(self, event: NewEvent, *, aggregate_allowed: bool = False) -> bool:
        """Journal and queue a high-volume event without waiting; False if it was dropped (and counted)
        because the queue is full or the journal cannot be written.

        With ``aggregate_allowed`` an allowed ``policy.checked`` only increments a per-minute count.
        """
        own = self.journal
        if aggregate_allowed and event.event_type == "policy.checked" and event.outcome == "allowed":
            minute = self._this_minute() if event.occurred_at is None else minute_of(event.occurred_at)
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
        """Journal (in one write) and queue as many of ``events``, in order, as the queue has room for;
        returns how many. The rest are neither queued nor counted as dropped: the caller gives them back
        to whoever sent them, to send again.

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
        self.tallies.dropped += 1
        if self.tallies.dropped % 1000 == 1:
            log.warning("audit_events_dropped", reason=reason, dropped_total=self.tallies.dropped)

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
                self.writer.release(event.event_id for event in pending)
                self.tallies.spilled += len(pending)
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
        return await self.writer.flush(everything=everything)

    def problem(self) -> str | None:
        """Why the batch writer cannot make progress or the journal cannot keep events, or None when all is
        well (readiness asks this)."""
        writer = self._tasks[0] if self._tasks else None
        if writer is not None and writer.done():
            return "the event-log writer has stopped"
        if self.journal is not None and self.journal.error is not None:
            return f"the event-log journal cannot be written: {self.journal.error}"
        since = self.writer.failing_since
        if since is not None and time.monotonic() - since >= self.stall_seconds:
            idle = time.monotonic() - since
            return f"the event log has appended nothing for {idle:.0f} s: {self.writer.last_error}"
        return None

    @property
    def stalled(self) -> bool:
        """Whether ``problem()`` reports one."""
        return self.problem() is not None

    async def seal_all(self) -> int:
        """Sign a checkpoint for every tenant with unsealed entries; returns how many were sealed."""
        return await checkpoints.seal_all(self.database, self.signer)

    async def replay_spilled(self) -> int:
        """Append the events of spill files left by earlier processes; returns how many were appended
        (``Replay.replay_spilled``)."""
        return await self._replay.replay_spilled()

    async def replay_journals(self) -> int:
        """Append what the journals of processes that are gone hold and the log does not; returns how many
        entries were appended (``Replay.replay_journals``)."""
        return await self._replay.replay_journals()

    # -- internals --------------------------------------------------------------------------------

    def _this_minute(self) -> str:
        # Formatted once a minute, not per decision (the check path calls this).
        now = int(time.time()) // 60
        if now != self._minute_number:
            self._minute_number = now
            self._minute_text = minute_of(datetime.fromtimestamp(now * 60, UTC))
        return self._minute_text

    def _drain_aggregates(self, everything: bool) -> None:
        current = minute_of(datetime.now(UTC))
        for key in [key for key in self._aggregates if everything or key[1] < current]:
            bucket = self._aggregates.pop(key)
            if bucket.counts:
                self._queue.append(aggregated_event(bucket))

    def _drain_dropped(self) -> None:
        for key in list(self._dropped):
            self._queue.append(dropped_event(self._dropped.pop(key)))

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
