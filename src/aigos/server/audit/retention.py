"""Retention of the event log: daily partitions ahead of need, and pruning entries past their days.

Pruning never breaks verifiability. ``recorded_at`` never decreases along a tenant's chain (the appender
guarantees it), so the entries recorded before the cutoff are a prefix of each tenant's sequence. Before
any entry is removed, retention stores for each tenant an *anchor*: the last pruned entry's ``seq`` and
hash and the Merkle compact range through it, and signs a checkpoint at exactly that size. An export then
starts from the anchor: the first remaining entry's ``prev_hash`` is the anchor's head hash, and every
later checkpoint's root is computable from the anchor's compact range plus the remaining entries.

On PostgreSQL whole daily partitions of ``audit_events`` are dropped (through an owner-run function: the
application role cannot delete entries); on SQLite the old rows are deleted inside one transaction that
briefly holds a row in ``audit_prune_guard``, the only condition under which the delete trigger allows it.
A tenant whose entries to prune do not verify (a tampered or incomplete chain) is not anchored, and
nothing of its log is removed: pruning must not destroy the evidence.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import structlog
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import auditlog
from aigos.core.merkle import CompactRange
from aigos.core.signing import Signer
from aigos.server.audit import appender, checkpoints
from aigos.server.audit.chain import entry_of
from aigos.server.audit.events import NewEvent
from aigos.server.audit.log import checkpoint_signer
from aigos.server.audit.models import AuditAnchor, AuditCheckpoint, AuditEvent, AuditPruneGuard
from aigos.server.background import PeriodicFlush, cancel
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import APP_ROLE, set_platform_scope
from aigos.server.db.types import utcnow

log = structlog.get_logger("aigos.audit.retention")

PRUNED_TYPE = "audit.pruned"
#: Days of partitions kept ready after today.
DAYS_AHEAD = 7
#: Entries read per query while computing an anchor.
PAGE_SIZE = 1_000
# Any constant works; it only has to be the same for every AIGOS process sharing a database.
_PRUNE_LOCK_KEY = 0x41_49_47_50_52  # "AIGPR"


@dataclass
class PruneResult:
    """What one ``prune`` did."""

    #: Entries recorded before midnight (UTC) starting this day were due.
    cutoff: date
    #: Tenants whose anchor moved forward.
    tenants: int = 0
    #: Entries newly covered by those anchors.
    entries: int = 0
    #: Entries removed from ``audit_events``.
    removed: int = 0
    #: Daily partitions dropped (PostgreSQL).
    partitions_dropped: int = 0
    #: Entries before the cutoff still stored: in PostgreSQL's DEFAULT partition, or of refused tenants.
    left_behind: int = 0
    #: Tenants whose entries did not verify, so nothing of theirs was anchored or removed.
    refused: list[uuid.UUID] = field(default_factory=list)
    #: True when another process was pruning, so this call did nothing.
    skipped: bool = False


@dataclass(frozen=True)
class _Anchored:
    tenant_id: uuid.UUID
    through_seq: int
    entries: int


class _Broken(Exception):
    """A tenant's entries do not verify; the message says where."""


def cutoff_day(now: datetime, retention_days: int) -> date:
    """The first day whose entries are kept: entries recorded before its midnight (UTC) are pruned."""
    return (now.astimezone(UTC) - timedelta(days=retention_days)).date()


async def ensure_partitions(database: Database, today: date, days_ahead: int = DAYS_AHEAD) -> int:
    """Create the daily partitions from yesterday through ``today + days_ahead`` that are missing.

    Returns how many were created; always 0 on SQLite, which has no partitions.
    """
    if database.kind != "postgresql":
        return 0
    async with database.session() as session:
        return await _ensure(session, today, days_ahead)


async def _ensure(session: AsyncSession, today: date, days_ahead: int) -> int:
    created = 0
    # One day at a time, each in its own savepoint: a day that cannot be created (PostgreSQL refuses while
    # the DEFAULT partition holds rows of that day) must not keep the other days from being created.
    for offset in range(-1, days_ahead + 1):
        day = today + timedelta(days=offset)
        try:
            async with session.begin_nested():
                made = await session.scalar(
                    text("SELECT aigos_audit_ensure_partitions(:day, 0)"), {"day": day}
                )
        except DBAPIError as exc:
            log.warning("audit_partition_not_created", day=day.isoformat(), error=str(exc.orig))
            continue
        created += int(made or 0)
    return created


async def prune(database: Database, signer: Signer, retention_days: int, now: datetime) -> PruneResult:
    """Remove every tenant's entries recorded before ``cutoff_day(now, retention_days)``, anchored first.

    For each tenant with such entries: sign a checkpoint at the last of them, store the anchor, and after
    the removal append an ``audit.pruned`` event recording it. Only one process prunes at a time.
    """
    cutoff = cutoff_day(now, retention_days)
    cutoff_at = datetime.combine(cutoff, time(), tzinfo=UTC)
    result = PruneResult(cutoff=cutoff)
    async with _exclusive(database) as acquired:
        if not acquired:
            result.skipped = True
            return result
        anchored: list[_Anchored] = []
        for tenant_id, boundary in await _due(database, cutoff_at):
            try:
                done = await _anchor(database, signer, tenant_id, boundary)
            except _Broken as exc:
                log.error("audit_prune_refused", tenant_id=str(tenant_id), reason=str(exc))
                result.refused.append(tenant_id)
                continue
            if done is not None:
                anchored.append(done)
                result.tenants += 1
                result.entries += done.entries
        if database.kind == "postgresql":
            await _drop_partitions(database, cutoff, cutoff_at, result)
        else:
            await _delete_rows(database, cutoff_at, result)
        for done in anchored:
            event = NewEvent(
                tenant_id=done.tenant_id,
                event_type=PRUNED_TYPE,
                actor_type="system",
                actor_id="retention",
                data={
                    "through_seq": done.through_seq,
                    "cutoff": cutoff.isoformat(),
                    "retention_days": retention_days,
                    "entries": done.entries,
                },
            )
            async with database.session() as session:
                await appender.append(session, done.tenant_id, [event])
    if result.tenants or result.removed or result.refused or result.left_behind:
        log.info(
            "audit_pruned",
            cutoff=cutoff.isoformat(),
            tenants=result.tenants,
            entries=result.entries,
            removed=result.removed,
            partitions_dropped=result.partitions_dropped,
            left_behind=result.left_behind,
            refused=len(result.refused),
        )
    return result


@asynccontextmanager
async def _exclusive(database: Database) -> AsyncIterator[bool]:
    """Whether this process may prune now (a PostgreSQL advisory lock, held on one connection meanwhile)."""
    if database.kind != "postgresql":
        yield True
        return
    async with database.engine.connect() as conn:
        acquired = bool(
            await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": _PRUNE_LOCK_KEY})
        )
        await conn.commit()
        try:
            yield acquired
        finally:
            if acquired:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PRUNE_LOCK_KEY})
                await conn.commit()


async def _due(database: Database, cutoff_at: datetime) -> list[tuple[uuid.UUID, int]]:
    """Each tenant with entries before the cutoff not yet anchored, and the last such entry's seq."""
    async with database.session() as session:
        await set_platform_scope(session)
        rows = await session.execute(
            select(AuditEvent.tenant_id, func.max(AuditEvent.seq))
            .where(AuditEvent.recorded_at < cutoff_at)
            .group_by(AuditEvent.tenant_id)
        )
        boundaries = {tenant_id: int(seq) for tenant_id, seq in rows.all()}
        anchored = await session.execute(select(AuditAnchor.tenant_id, AuditAnchor.seq))
        anchors = {tenant_id: int(seq) for tenant_id, seq in anchored.all()}
    return sorted(
        (tenant_id, seq) for tenant_id, seq in boundaries.items() if seq > anchors.get(tenant_id, 0)
    )


async def _anchor(
    database: Database, signer: Signer, tenant_id: uuid.UUID, boundary: int
) -> _Anchored | None:
    """Move the tenant's anchor to entry ``boundary``, with a signed checkpoint there."""
    async with database.session(tenant_id) as session:
        anchor = await session.get(AuditAnchor, tenant_id, populate_existing=True)
        seq, head, compact = 0, auditlog.GENESIS_HASH, CompactRange()
        if anchor is not None:
            if anchor.seq >= boundary:
                return None
            seq, head, compact = anchor.seq, anchor.head_hash, CompactRange.from_json(anchor.compact_range)
        previous = seq
        # The newest checkpoint in between saves re-reading what it already seals.
        sealed = await session.scalar(
            select(AuditCheckpoint)
            .where(
                AuditCheckpoint.tenant_id == tenant_id,
                AuditCheckpoint.tree_size > seq,
                AuditCheckpoint.tree_size <= boundary,
            )
            .order_by(AuditCheckpoint.tree_size.desc())
            .limit(1)
        )
        if sealed is not None:
            seq, head = sealed.tree_size, sealed.head_hash
            compact = CompactRange.from_json(sealed.compact_range)
            if compact.size != seq or compact.root().hex() != sealed.root_hash:
                raise _Broken(f"checkpoint at {seq} does not match its own compact range")
        while seq < boundary:
            page = (
                await session.scalars(
                    select(AuditEvent)
                    .where(
                        AuditEvent.tenant_id == tenant_id, AuditEvent.seq > seq, AuditEvent.seq <= boundary
                    )
                    .order_by(AuditEvent.seq)
                    .limit(PAGE_SIZE)
                )
            ).all()
            if not page:
                raise _Broken(f"entries {seq + 1} to {boundary} are missing")
            for row in page:
                if row.seq != seq + 1:
                    raise _Broken(f"entry {seq + 1} is missing")
                if row.prev_hash != head:
                    raise _Broken(f"entry {row.seq}: prev_hash does not match the previous entry")
                if auditlog.entry_hash(entry_of(row)) != row.hash:
                    raise _Broken(f"entry {row.seq}: content does not match its hash")
                seq, head = row.seq, row.hash
                compact.append(auditlog.entry_leaf(head))
        checkpoint = await checkpoints.seal_at(session, signer, tenant_id, seq, head, compact)
        if checkpoint is None or checkpoint.head_hash != head or checkpoint.root_hash != compact.root().hex():
            raise _Broken(f"the checkpoint at {seq} differs from the entries")
        values = {
            "tenant_id": tenant_id,
            "seq": seq,
            "head_hash": head,
            "compact_range": compact.to_json(),
            "pruned_at": utcnow(),
        }
        upsert = (pg_insert if database.kind == "postgresql" else sqlite_insert)(AuditAnchor).values(values)
        await session.execute(
            upsert.on_conflict_do_update(
                index_elements=["tenant_id"],
                set_={
                    name: upsert.excluded[name] for name in ("seq", "head_hash", "compact_range", "pruned_at")
                },
            )
        )
    return _Anchored(tenant_id, seq, seq - previous)


async def _old_rows(session: AsyncSession, cutoff_at: datetime) -> int:
    await set_platform_scope(session)
    count = await session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.recorded_at < cutoff_at)
    )
    return int(count or 0)


async def _drop_partitions(
    database: Database, cutoff: date, cutoff_at: datetime, result: PruneResult
) -> None:
    """PostgreSQL: drop the daily partitions before the cutoff, then recreate the coming days' partitions."""
    if result.refused:
        # Partitions hold every tenant's rows: dropping one would destroy the refused tenants' evidence too.
        log.error(
            "audit_partitions_kept", reason="a tenant's log did not verify", tenants=len(result.refused)
        )
        async with database.session() as session:
            result.left_behind = await _old_rows(session, cutoff_at)
        return
    async with database.session() as session:
        before = await _old_rows(session, cutoff_at)
        dropped = await session.scalar(
            text("SELECT aigos_audit_drop_partitions_before(:day)"), {"day": cutoff}
        )
        result.partitions_dropped = int(dropped or 0)
        result.left_behind = await _old_rows(session, cutoff_at)
        result.removed = before - result.left_behind
        # Still inside the drop's lock: if today's partition was just dropped (a cutoff in the future),
        # it exists again before any new entry could fall into the DEFAULT partition.
        await _ensure(session, utcnow().date(), DAYS_AHEAD)
    if result.left_behind:
        log.warning(
            "audit_prune_left_rows",
            reason="entries before the cutoff are in the DEFAULT partition, which is never dropped",
            rows=result.left_behind,
            cutoff=cutoff.isoformat(),
        )


async def _delete_rows(database: Database, cutoff_at: datetime, result: PruneResult) -> None:
    """SQLite: delete each tenant's entries before the cutoff up to its anchor, in one transaction."""
    anchored_seq = (
        select(AuditAnchor.seq).where(AuditAnchor.tenant_id == AuditEvent.tenant_id).scalar_subquery()
    )
    async with database.session() as session:
        await session.execute(insert(AuditPruneGuard).values(id=1))
        deleted = await session.execute(
            delete(AuditEvent).where(AuditEvent.recorded_at < cutoff_at, AuditEvent.seq <= anchored_seq)
        )
        await session.execute(delete(AuditPruneGuard))
        result.removed = int(getattr(deleted, "rowcount", 0) or 0)
        result.left_behind = await _old_rows(session, cutoff_at)


async def run_once(settings: Settings, retention_days: int | None = None) -> PruneResult:
    """One maintenance pass outside a server (``aigos audit prune``): partitions, then retention."""
    database = Database(settings.resolved_database_url, pool_size=2, max_overflow=0, role=APP_ROLE)
    try:
        now = datetime.now(UTC)
        await ensure_partitions(database, now.date())
        days = retention_days or settings.audit_retention_days
        return await prune(database, checkpoint_signer(settings.pepper), days, now)
    finally:
        await database.dispose()


class Maintenance(PeriodicFlush):
    """The event log's upkeep in a server process: partitions ahead of need, and retention.

    Runs shortly after start (so a server restarted more often than hourly still prunes) and then every
    ``interval`` seconds. Stopping does not run it once more: it buffers nothing.
    """

    name = "audit-maintenance"

    def __init__(
        self,
        database: Database,
        signer: Signer,
        retention_days: int,
        *,
        interval: float = 3600.0,
        first_delay: float = 60.0,
    ) -> None:
        super().__init__(interval)
        self.database = database
        self.signer = signer
        self.retention_days = retention_days
        self.first_delay = first_delay

    async def flush(self) -> None:
        """Create the coming days' partitions, then prune what is past retention."""
        now = datetime.now(UTC)
        await ensure_partitions(self.database, now.date())
        await prune(self.database, self.signer, self.retention_days, now)

    async def stop(self) -> None:
        """Stop the timer (without a last run)."""
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        delay = self.first_delay
        while True:
            await asyncio.sleep(delay)
            await self._flush_logged()
            delay = self.interval
