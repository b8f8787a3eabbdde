"""Appending to a tenant's chain: lock the head, hash each entry onto it, insert, move the head.

The head row lock makes appends to one tenant's log strictly sequential across every process, so the
sequence stays gap-free and the chain linear; different tenants append in parallel.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import auditlog
from aigos.core.canonical import parse
from aigos.core.merkle import CompactRange
from aigos.server.audit.events import NewEvent
from aigos.server.audit.models import AuditEvent, AuditHead
from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow

#: Entries hashed between two chances for other coroutines to run.
YIELD_EVERY = 64


def isoformat(moment: datetime) -> str:
    """The one timestamp format inside hashed entries: UTC, microseconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_of(row: AuditEvent) -> dict[str, Any]:
    """The hashed entry of a stored row, as exported (without ``hash`` and ``kind``)."""
    return {
        "tenant_id": str(row.tenant_id),
        "seq": row.seq,
        "event_id": str(row.event_id),
        "event_type": row.event_type,
        "agent_id": row.agent_id,
        "timestamp": isoformat(row.occurred_at),
        "recorded_at": isoformat(row.recorded_at),
        "actor": {"type": row.actor_type, "id": row.actor_id},
        "source": row.source,
        "outcome": row.outcome,
        "request_id": row.request_id,
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "data": parse(row.data),
        "prev_hash": row.prev_hash,
    }


async def _lock_head(session: AsyncSession, tenant_id: uuid.UUID) -> AuditHead:
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    values = {
        "tenant_id": tenant_id,
        "seq": 0,
        "hash": auditlog.GENESIS_HASH,
        "recorded_at": datetime(1970, 1, 1, tzinfo=UTC),
        "compact_range": CompactRange().to_json(),
    }
    locking = (
        select(AuditHead)
        .where(AuditHead.tenant_id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(AuditHead).values(values)
    creating = ins.on_conflict_do_nothing(index_elements=["tenant_id"])
    if dialect == "postgresql":
        # Row lock first (one round trip in the common case); the first append of a tenant creates the
        # head, and a concurrent first append then waits on the lock.
        head = await session.scalar(locking)
        if head is None:
            await session.execute(creating)
            head = await session.scalar(locking)
    else:
        # SQLite has no row locks: the write comes first so the transaction holds the database's write
        # lock before it reads the head.
        await session.execute(creating)
        head = await session.scalar(locking)
    assert head is not None
    return head


async def append(
    session: AsyncSession, tenant_id: uuid.UUID, events: Sequence[NewEvent]
) -> list[dict[str, Any]]:
    """Append ``events`` (all of ``tenant_id``) in order inside the session's transaction.

    Returns the stored entries with their ``hash``. The caller commits; until then the tenant's head
    stays locked, so keep the transaction short.
    """
    if not events:
        return []
    if session.info.get("tenant_id") != tenant_id:
        await set_tenant(session, tenant_id)
    head = await _lock_head(session, tenant_id)
    compact = CompactRange.from_json(head.compact_range)
    # Never earlier than the previous entry, even if this process's clock is behind another's: retention
    # prunes by time, and must cut the chain only at a prefix.
    recorded = max(utcnow(), head.recorded_at)
    recorded_text = isoformat(recorded)
    tenant_text = str(tenant_id)
    seq, prev = head.seq, head.hash
    rows: list[tuple[Any, ...]] = []
    stored: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        if event.tenant_id != tenant_id:
            raise ValueError("append() takes events of one tenant")
        if index and index % YIELD_EVERY == 0:
            # Hashing a large batch is CPU work on the server's event loop: let requests through meanwhile.
            await asyncio.sleep(0)
        seq += 1
        data = dict(event.data)
        data_text = event.data_text
        occurred = event.occurred_at or recorded
        entry = {
            "tenant_id": tenant_text,
            "seq": seq,
            "event_id": str(event.event_id),
            "event_type": event.event_type,
            "agent_id": event.agent_id,
            "timestamp": recorded_text if event.occurred_at is None else isoformat(occurred),
            "recorded_at": recorded_text,
            "actor": {"type": event.actor_type, "id": event.actor_id},
            "source": event.source,
            "outcome": event.outcome,
            "request_id": event.request_id,
            "trace_id": event.trace_id,
            "span_id": event.span_id,
            # The value itself, not its parsed text: canonical JSON of both is the same bytes.
            "data": data,
            "prev_hash": prev,
        }
        entry_prev = prev
        prev = auditlog.fields_hash(entry)
        compact.append(auditlog.entry_leaf(prev))
        stored.append({**entry, "hash": prev})
        rows.append(
            (
                tenant_id,
                seq,
                recorded,
                event.event_id,
                event.event_type,
                event.agent_id,
                occurred,
                event.actor_type,
                event.actor_id,
                event.source,
                event.outcome,
                event.request_id,
                event.trace_id,
                event.span_id,
                data_text,
                entry_prev,
                prev,
            )
        )
    await _insert(session, rows)
    head.seq, head.hash, head.recorded_at = seq, prev, recorded
    head.compact_range = compact.to_json()
    await session.flush()
    return stored


_COLUMNS = (
    "tenant_id",
    "seq",
    "recorded_at",
    "event_id",
    "event_type",
    "agent_id",
    "occurred_at",
    "actor_type",
    "actor_id",
    "source",
    "outcome",
    "request_id",
    "trace_id",
    "span_id",
    "data",
    "prev_hash",
    "hash",
)
# Built from the constant column list above, never from input.
_PG_INSERT = (
    f"INSERT INTO audit_events ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(f'${n}' for n in range(1, len(_COLUMNS) + 1))})"
)


async def _insert(session: AsyncSession, rows: list[tuple[Any, ...]]) -> None:
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        # asyncpg's own executemany, on the session's connection and so inside its transaction: SQLAlchemy's
        # per-row parameter processing cost more than hashing the entry did.
        raw = await connection.get_raw_connection()
        await raw.driver_connection.executemany(_PG_INSERT, rows)  # type: ignore[union-attr]
        return
    table = cast(Table, AuditEvent.__table__)
    await session.execute(insert(table), [dict(zip(_COLUMNS, row, strict=True)) for row in rows])
