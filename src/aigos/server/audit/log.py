"""The event log's one writer interface, used by every context.

- ``record(event, session)``: low-volume events, appended inside the caller's transaction (or a new one),
  durable before the request returns and atomic with the change they describe.
- ``enqueue(event)``: high-volume events (decisions, telemetry). It only enqueues; a background task appends
  in batches, per tenant, in one transaction each. When the queue is full (``AIGOS_AUDIT_QUEUE_SIZE``)
  the new event is dropped, counted, and the count itself is appended to the tenant's log as an
  ``audit.events_dropped`` event once there is room, so the loss is on the record. Allowed decisions
  may be aggregated into one ``policy.decisions_aggregated`` event per tenant and minute.
- A sealer signs a checkpoint for every tenant with new entries every ``AIGOS_AUDIT_CHECKPOINT_SECONDS``.
Everything buffered is written on graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.signing import Signer, derive_seed
from aigos.server.audit import appender, checkpoints
from aigos.server.audit.events import NewEvent
from aigos.server.background import cancel
from aigos.server.db import Database
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
    ) -> None:
        self.database = database
        self.signer = signer
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.checkpoint_seconds = checkpoint_seconds
        self.in_flight = in_flight
        self._queue: deque[NewEvent] = deque()
        self._aggregates: dict[tuple[uuid.UUID, str], Counter[str]] = {}
        self._dropped: Counter[uuid.UUID] = Counter()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pauses = 0
        self.heads = appender.Heads()
        self.appended_total = 0
        self.dropped_total = 0

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
            self._tasks = [
                asyncio.create_task(self._write_loop(), name="audit-writer"),
                asyncio.create_task(self._seal_loop(), name="audit-sealer"),
            ]

    async def stop(self) -> None:
        """Stop the loops, write everything buffered, and seal what was written."""
        await cancel(*self._tasks)
        self._tasks = []
        try:
            await self.flush(everything=True)
            await self.seal_all()
        except Exception:
            log.exception("audit_final_flush_failed", depth=self.depth)

    async def flush(self, *, everything: bool = False) -> int:
        """Append what is queued (and aggregates of finished minutes; all of them with ``everything``)."""
        self._drain_aggregates(everything)
        self._drain_dropped()
        written = 0
        # Only what is queued now: events arriving meanwhile wait for the next tick, so steady traffic is
        # written in full batches rather than one tiny transaction after another.
        pending = len(self._queue)
        while self._queue and (everything or written < pending):
            size = min(self.batch_size, len(self._queue) if everything else pending - written)
            batch = [self._queue.popleft() for _ in range(size)]
            await self._append_batch(batch)
            written += len(batch)
            if not everything and written >= self.batch_size * 20:
                break
        return written

    async def seal_all(self) -> int:
        """Sign a checkpoint for every tenant with unsealed entries; returns how many were sealed."""
        async with self.database.session() as session:
            tenants = await checkpoints.unsealed_tenants(session)
        for tenant_id in tenants:
            async with self.database.session() as session:
                await checkpoints.seal(session, self.signer, tenant_id)
        return len(tenants)

    async def _append_batch(self, batch: list[NewEvent]) -> None:
        by_tenant: dict[uuid.UUID, list[NewEvent]] = {}
        for event in batch:
            by_tenant.setdefault(event.tenant_id, []).append(event)
        # One transaction per tenant: it moves that tenant's head alone, so writers in other processes
        # append to other tenants meanwhile.
        # Tenants are independent chains, so several are written at once: the round trips of one overlap
        # with the others' (one writer alone would mostly wait on them).
        written: set[uuid.UUID] = set()
        if self.database.kind == "sqlite":
            # SQLite takes one writer at a time: everything is hashed and converted first, between
            # requests, and then inserted in one short transaction (others wait for the write lock meanwhile).
            dialect = self.database.engine.dialect
            try:
                prepared = [
                    await appender.prepare_sqlite(
                        dialect, tenant_id, events, self.heads, pause=self._pause, entries=False
                    )
                    for tenant_id, events in by_tenant.items()
                ]
                async with self.database.session() as session:
                    for item in prepared:
                        await appender.append_sqlite(session, item, self.heads)
            except Exception:
                self._queue.extendleft(reversed(batch))
                raise
            self.appended_total += len(batch)
            return
        slots = asyncio.Semaphore(PARALLEL_TENANTS)

        async def write(tenant_id: uuid.UUID, events: list[NewEvent]) -> None:
            async with slots:
                await self._append_now(tenant_id, events, batch=True)
            written.add(tenant_id)
            self.appended_total += len(events)

        outcomes = await asyncio.gather(
            *(write(tenant_id, events) for tenant_id, events in by_tenant.items()), return_exceptions=True
        )
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            # What was not committed goes back in order; the next flush retries it.
            self._queue.extendleft(reversed([event for event in batch if event.tenant_id not in written]))
            raise failures[0]

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
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("audit_flush_failed", depth=self.depth)
                await asyncio.sleep(1.0)

    async def _seal_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_seconds)
            try:
                await self.seal_all()
            except Exception:
                log.exception("audit_seal_failed")
