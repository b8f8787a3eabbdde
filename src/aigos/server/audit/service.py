"""Reading a tenant's event log: filtered pages, single entries, inclusion proofs, the streamed export
and its verification. No HTTP here.

Every query names the tenant explicitly: on PostgreSQL row-level security would hide other tenants'
rows anyway, but SQLite has no such wall.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import auditlog
from aigos.core.merkle import CompactRange, Tree
from aigos.core.signing import Signer, b64url
from aigos.server.audit import checkpoints
from aigos.server.audit.chain import entry_of, isoformat
from aigos.server.audit.models import AuditAnchor, AuditCheckpoint, AuditEvent, AuditHead
from aigos.server.db import Database
from aigos.server.db.batches import batches
from aigos.server.db.types import utcnow
from aigos.server.errors import AigosError, NotFound

#: Entries read per query while exporting: bounds memory however long the log is.
EXPORT_PAGE_ROWS = 5_000
#: Entries read per query while verifying on the server: a page is loaded and serialised on the event loop
#: in one go, so a fifth of an export's page keeps that pause shorter.
VERIFY_PAGE_ROWS = 1_000
#: Export lines verified between two turns of the event loop (about 8 µs of parsing and hashing each).
VERIFY_SLICE_LINES = 32


@dataclass(frozen=True)
class EventFilter:
    """Conditions on listed entries; None means any.

    ``event_type`` matches exactly, or as a prefix when it ends with ``.*`` (``api_key.*``).
    ``since`` (included) and ``until`` (excluded) bound ``recorded_at``.
    """

    actor_type: str | None = None
    actor_id: str | None = None
    event_type: str | None = None
    agent_id: str | None = None
    outcome: str | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        """The SQL conditions of this filter."""
        where: list[ColumnElement[bool]] = []
        exact = {
            AuditEvent.actor_type: self.actor_type,
            AuditEvent.actor_id: self.actor_id,
            AuditEvent.agent_id: self.agent_id,
            AuditEvent.outcome: self.outcome,
            AuditEvent.source: self.source,
        }
        where.extend(column == value for column, value in exact.items() if value is not None)
        if self.event_type is not None:
            if self.event_type.endswith(".*"):
                # Keep the dot: `api_key.*` must not match a hypothetical `api_keys.created`.
                prefix = self.event_type[:-1]
                where.append(AuditEvent.event_type.startswith(prefix, autoescape=True))
            else:
                where.append(AuditEvent.event_type == self.event_type)
        if self.since is not None:
            where.append(AuditEvent.recorded_at >= self.since)
        if self.until is not None:
            where.append(AuditEvent.recorded_at < self.until)
        return where


def exported(row: AuditEvent) -> dict[str, Any]:
    """A stored row as the API and the export show it: the hashed entry plus its ``hash``."""
    return {**entry_of(row), "hash": row.hash}


def public_keys(signer: Signer) -> list[dict[str, str]]:
    """The checkpoint-signing keys as published at ``/v1/audit/keys`` and in every export header."""
    return [{"key_id": signer.key_id, "alg": "Ed25519", "public_key": b64url(signer.public_key)}]


def inconsistent(detail: str) -> AigosError:
    """A 500 for a stored log that contradicts itself (rows missing or altered underneath the server)."""
    return AigosError(
        f"{detail}; run `POST /v1/audit/verify` to locate the damage.", code="AUDIT_LOG_INCONSISTENT"
    )


async def page(
    session: AsyncSession, tenant_id: uuid.UUID, filters: EventFilter, *, page: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of the tenant's entries matching ``filters``, newest first, and the total match count."""
    where = [AuditEvent.tenant_id == tenant_id, *filters.conditions()]
    total = await session.scalar(select(func.count()).select_from(AuditEvent).where(*where))
    rows = await session.scalars(
        select(AuditEvent)
        .where(*where)
        .order_by(AuditEvent.seq.desc())
        .offset((page - 1) * limit)
        .limit(limit)
    )
    return [exported(row) for row in rows], int(total or 0)


@dataclass(frozen=True, slots=True)
class Tally:
    """How many events of each type, and when the newest of them happened."""

    counts: dict[str, int]
    latest: datetime | None


async def tally(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    event_types: Sequence[str],
    agent_ids: Sequence[str],
    *,
    tenant_wide: Sequence[str] = (),
) -> Tally:
    """Events of ``event_types`` about any of ``agent_ids``, counted by type (one grouped query per batch
    of agents), plus events of ``tenant_wide`` types about no agent (a tenant-wide kill switch)."""
    counts: dict[str, int] = dict.fromkeys(event_types, 0)
    latest: datetime | None = None

    async def add(condition: Any, types: Sequence[str]) -> None:
        nonlocal latest
        stmt = (
            select(AuditEvent.event_type, func.count(), func.max(AuditEvent.occurred_at))
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.event_type.in_(types), condition)
            .group_by(AuditEvent.event_type)
        )
        for event_type, count, newest in await session.execute(stmt):
            counts[event_type] = counts.get(event_type, 0) + int(count)
            latest = newest if latest is None or (newest is not None and newest > latest) else latest

    for batch in batches(agent_ids, 1):
        await add(AuditEvent.agent_id.in_(batch), event_types)
    if tenant_wide:
        await add(AuditEvent.agent_id.is_(None), tenant_wide)
    return Tally(counts, latest)


async def about_agents(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    event_types: Sequence[str],
    agent_ids: Sequence[str],
    *,
    after: int,
    limit: int,
) -> list[dict[str, Any]]:
    """The next ``limit`` entries after ``seq`` ``after`` of ``event_types`` about any of ``agent_ids``, in
    log order, as exported."""
    rows: list[AuditEvent] = []
    for batch in batches(agent_ids, 1):
        stmt = (
            select(AuditEvent)
            .where(
                AuditEvent.tenant_id == tenant_id,
                AuditEvent.seq > after,
                AuditEvent.event_type.in_(event_types),
                AuditEvent.agent_id.in_(batch),
            )
            .order_by(AuditEvent.seq)
            .limit(limit)
        )
        rows.extend(await session.scalars(stmt))
    rows.sort(key=lambda row: row.seq)
    return [exported(row) for row in rows[:limit]]


async def head(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """The ``seq`` of the tenant's newest entry (0 for an empty log)."""
    # The head row, not max(seq): one row, where the log is partitioned by day.
    found = await session.scalar(select(AuditHead.seq).where(AuditHead.tenant_id == tenant_id))
    return int(found or 0)


async def following(
    session: AsyncSession, tenant_id: uuid.UUID, filters: EventFilter, *, after: int, upto: int, limit: int
) -> list[AuditEntryRow]:
    """The tenant's entries matching ``filters`` with ``after < seq <= upto``, oldest first, at most
    ``limit``: each poll of a follower reads only what is new since its last one, whatever it matches."""
    rows = await session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.tenant_id == tenant_id,
            AuditEvent.seq > after,
            AuditEvent.seq <= upto,
            *filters.conditions(),
        )
        .order_by(AuditEvent.seq)
        .limit(limit)
    )
    return [AuditEntryRow(int(row.seq), row.event_type, exported(row)) for row in rows]


@dataclass(frozen=True)
class AuditEntryRow:
    """One entry as a follower sends it: its position, its type and the entry as the API shows it."""

    seq: int
    event_type: str
    entry: dict[str, Any]


async def get(session: AsyncSession, tenant_id: uuid.UUID, event_id: uuid.UUID) -> AuditEvent:
    """One entry of the tenant by event id; 404 ``EVENT_NOT_FOUND`` (also for other tenants' ids)."""
    row = await session.scalar(
        select(AuditEvent)
        .where(AuditEvent.tenant_id == tenant_id, AuditEvent.event_id == event_id)
        .order_by(AuditEvent.seq)
        .limit(1)
    )
    if row is None:
        raise NotFound(f"No event {event_id} in this tenant's log.", code="EVENT_NOT_FOUND")
    return row


async def anchor_of(session: AsyncSession, tenant_id: uuid.UUID) -> AuditAnchor | None:
    """Where retention cut the tenant's log, if it did."""
    return await session.scalar(select(AuditAnchor).where(AuditAnchor.tenant_id == tenant_id))


async def latest_checkpoint(session: AsyncSession, signer: Signer, tenant_id: uuid.UUID) -> AuditCheckpoint:
    """The tenant's newest checkpoint, sealed now if entries were recorded since the last one.

    404 ``CHECKPOINT_NOT_FOUND`` when the log is empty.
    """
    sealed = await checkpoints.seal(session, signer, tenant_id)
    latest = await checkpoints.latest(session, tenant_id)
    checkpoint = latest if latest is not None else sealed
    if checkpoint is None:
        raise NotFound("The tenant's log has no checkpoint yet.", code="CHECKPOINT_NOT_FOUND")
    return checkpoint


async def proof(
    session: AsyncSession, signer: Signer, tenant_id: uuid.UUID, event_id: uuid.UUID
) -> dict[str, Any]:
    """An inclusion proof of one entry against the latest checkpoint (sealed now if it does not cover it).

    The proof is built from the stored entry hashes; if rows were altered underneath the server it will not
    verify against the signed root, which is the point.
    """
    row = await get(session, tenant_id, event_id)
    checkpoint = await checkpoints.latest(session, tenant_id)
    if checkpoint is None or checkpoint.tree_size < row.seq:
        checkpoint = await checkpoints.seal(session, signer, tenant_id)
    if checkpoint is None or checkpoint.tree_size < row.seq:
        raise inconsistent(f"The log head is behind entry {row.seq}")
    anchor = await anchor_of(session, tenant_id)
    prefix = CompactRange.from_json(anchor.compact_range) if anchor is not None else CompactRange()
    size = checkpoint.tree_size
    # Hashes only: 64 characters a leaf, so even a long log's tree fits comfortably for one request.
    hashes: Sequence[str] = (
        await session.scalars(
            select(AuditEvent.hash)
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.seq > prefix.size, AuditEvent.seq <= size)
            .order_by(AuditEvent.seq, AuditEvent.recorded_at)
        )
    ).all()
    if len(hashes) != size - prefix.size:
        raise inconsistent(f"Expected {size - prefix.size} entries after the anchor, found {len(hashes)}")
    tree = Tree([auditlog.entry_leaf(value) for value in hashes], prefix)
    path = tree.inclusion_proof(row.seq - 1, size)
    return {
        "entry": exported(row),
        "leaf_index": row.seq - 1,
        "tree_size": size,
        "proof": [node.hex() for node in path],
        "checkpoint": checkpoints.to_json(checkpoint),
    }


# -- export ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportPlan:
    """What one export covers: after the anchor (if any) up to and including ``through``."""

    tenant_id: uuid.UUID
    anchor: dict[str, Any] | None
    through: int

    @property
    def start(self) -> int:
        """The last sequence number before the first exported entry."""
        return int(self.anchor["seq"]) if self.anchor is not None else 0


async def plan_export(database: Database, signer: Signer, tenant_id: uuid.UUID) -> ExportPlan:
    """Seal the tenant's head and fix the export's extent there, so every exported entry is sealed.

    Runs in its own committed transaction: the export reads in later transactions of its own.
    """
    async with database.session(tenant_id) as session:
        sealed = await checkpoints.seal(session, signer, tenant_id)
        anchor = await anchor_of(session, tenant_id)
    anchor_json = (
        None
        if anchor is None
        else {"seq": anchor.seq, "head_hash": anchor.head_hash, "compact_range": anchor.compact_range}
    )
    start = anchor.seq if anchor is not None else 0
    return ExportPlan(tenant_id, anchor_json, max(sealed.tree_size if sealed else 0, start))


def _line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


async def export_pages(
    database: Database, signer: Signer, plan: ExportPlan, *, page_rows: int = EXPORT_PAGE_ROWS
) -> AsyncGenerator[list[bytes], None]:
    """The export's NDJSON lines (without newlines), a page at a time.

    The header, then the entries in ``seq`` order, each checkpoint right after the entry at its
    ``tree_size``. Each page is read in a short transaction of its own, so a long export neither holds
    memory nor a database snapshot.
    """
    tenant_id = plan.tenant_id
    header = {
        "kind": "header",
        "format": auditlog.EXPORT_FORMAT,
        "tenant_id": str(tenant_id),
        "generated_at": isoformat(utcnow()),
        "keys": public_keys(signer),
        "anchor": plan.anchor,
    }
    first: list[bytes] = [_line(header)]
    if plan.anchor is not None:
        async with database.session(tenant_id) as session:
            at_anchor = await session.scalar(
                select(AuditCheckpoint).where(
                    AuditCheckpoint.tenant_id == tenant_id, AuditCheckpoint.tree_size == plan.start
                )
            )
        if at_anchor is not None:
            first.append(_line({"kind": "checkpoint", **checkpoints.to_json(at_anchor)}))
    yield first
    low = plan.start
    while low < plan.through:
        high = min(low + page_rows, plan.through)
        async with database.session(tenant_id) as session:
            rows = (
                await session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.tenant_id == tenant_id, AuditEvent.seq > low, AuditEvent.seq <= high)
                    .order_by(AuditEvent.seq, AuditEvent.recorded_at)
                )
            ).all()
            sealed = (
                await session.scalars(
                    select(AuditCheckpoint)
                    .where(
                        AuditCheckpoint.tenant_id == tenant_id,
                        AuditCheckpoint.tree_size > low,
                        AuditCheckpoint.tree_size <= high,
                    )
                    .order_by(AuditCheckpoint.tree_size)
                )
            ).all()
        yield _merge(rows, sealed)
        low = high


def _merge(rows: Sequence[AuditEvent], sealed: Sequence[AuditCheckpoint]) -> list[bytes]:
    """Entries in order with each checkpoint after the entries it covers.

    A checkpoint is placed by its size, not by finding its entry, so it is still exported (and the gap
    still shows) if the entry it follows was deleted from the database.
    """
    lines: list[bytes] = []
    pending = list(sealed)
    for row in rows:
        while pending and pending[0].tree_size < row.seq:
            lines.append(_line({"kind": "checkpoint", **checkpoints.to_json(pending.pop(0))}))
        lines.append(_line({"kind": "event", **exported(row)}))
    lines.extend(_line({"kind": "checkpoint", **checkpoints.to_json(cp)}) for cp in pending)
    return lines


async def export_stream(database: Database, signer: Signer, plan: ExportPlan) -> AsyncIterator[bytes]:
    """The export as NDJSON bytes, one chunk per page."""
    async for lines in export_pages(database, signer, plan):
        yield b"\n".join(lines) + b"\n"


async def verify(database: Database, signer: Signer, tenant_id: uuid.UUID) -> auditlog.Report:
    """Verify the tenant's export as it would be downloaded, trusting only this server's key.

    The export is produced a page at a time and fed to an incremental verifier, so memory stays at one
    page however long the log is. Hashing is CPU work on the event loop: it goes in slices of
    ``VERIFY_SLICE_LINES`` lines with a turn of the loop between them, so other requests are served
    meanwhile (hashlib and orjson hold the GIL on entry-sized inputs, so a thread would not help them).
    """
    plan = await plan_export(database, signer, tenant_id)
    verifier = auditlog.ExportVerifier({signer.key_id: signer.public_key})
    pages = export_pages(database, signer, plan, page_rows=VERIFY_PAGE_ROWS)
    try:
        async for lines in pages:
            for start in range(0, len(lines), VERIFY_SLICE_LINES):
                if not verifier.feed_many(lines[start : start + VERIFY_SLICE_LINES]):
                    return verifier.finish()
                await asyncio.sleep(0)
    finally:
        # Verification may stop at the first failure, leaving the reader mid-log.
        await pages.aclose()
    return verifier.finish()
