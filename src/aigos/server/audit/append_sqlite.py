"""Appending to a tenant's chain on SQLite, which has one writer at a time.

The segment is hashed onto the remembered head before the write transaction begins; inside it, which holds
the database's write lock, the head is read, the segment rehashed only if the head moved meanwhile, the rows
inserted and the head moved.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Dialect, Table, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from aigos.server.audit.chain import GENESIS, Head, Heads, Pause, Segment, chain, yield_to_loop
from aigos.server.audit.events import NewEvent
from aigos.server.audit.models import AuditEvent, AuditHead
from aigos.server.db import Database

#: Rows converted to the SQLite driver's values between two pauses (about 60 µs of work).
ROWS_PER_PAUSE = 16


@dataclass(slots=True)
class Prepared:
    """Events hashed onto the remembered head, with their rows in the driver's form, ready to insert."""

    tenant_id: uuid.UUID
    events: Sequence[NewEvent]
    entries: bool
    #: The head the segment was hashed onto (None: nothing remembered, hash under the lock).
    onto: Head | None = None
    segment: Segment | None = None
    params: list[tuple[Any, ...]] = field(default_factory=list)


async def prepare(
    dialect: Dialect,
    tenant_id: uuid.UUID,
    events: Sequence[NewEvent],
    heads: Heads,
    *,
    pause: Pause = yield_to_loop,
    entries: bool = True,
) -> Prepared:
    """Hash ``events`` onto the tenant's remembered head and convert its rows, before any lock is taken.

    SQLite has one writer at a time: what can be done before the write transaction begins is done here,
    with pauses, so the transaction itself (``insert``) holds the database's write lock only for the
    inserts, and the event loop is never held for long by converting a large batch.
    """
    prepared = Prepared(tenant_id, events, entries)
    onto = heads.get(tenant_id)
    if onto is not None:
        prepared.onto = onto
        prepared.segment = await chain(tenant_id, onto, events, pause=pause, entries=entries)
        prepared.params = await _sqlite_params(dialect, tenant_id, prepared.segment, pause)
    return prepared


async def insert(session: AsyncSession, prepared: Prepared, heads: Heads) -> list[dict[str, Any]]:
    """Insert a prepared segment inside the session's transaction, rehashed first if the head moved."""
    # Core statements on the session's connection: the ORM's unit of work would cost more than the
    # inserts, all of it on the event loop while the database's write lock is held.
    connection = await session.connection()
    tenant_id = prepared.tenant_id
    session.info["tenant_id"] = tenant_id
    current = await _lock_head(connection, tenant_id)
    segment, params = prepared.segment, prepared.params
    onto = prepared.onto
    if segment is None or onto is None or (onto.seq, onto.hash) != (current.seq, current.hash):
        # Nothing remembered, or another writer came first: hash onto the head as it is now.
        segment = await chain(tenant_id, current, prepared.events, entries=prepared.entries)
        params = await _sqlite_params(connection.dialect, tenant_id, segment, yield_to_loop)
    await connection.exec_driver_sql(_sqlite_insert_sql(), params)
    moved = segment.head
    await connection.execute(
        update(_HEADS)
        .where(_HEADS.c.tenant_id == tenant_id)
        .values(
            seq=moved.seq, hash=moved.hash, recorded_at=moved.recorded_at, compact_range=moved.compact_range
        )
    )
    # Before the commit: if it fails, the memory is ahead of the database, and the next append sees that
    # under the lock and rehashes (as after another writer's append).
    heads.remember(tenant_id, moved)
    return segment.stored


_EVENTS = cast(Table, AuditEvent.__table__)
_HEADS = cast(Table, AuditHead.__table__)
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


@functools.cache
def _sqlite_insert_sql() -> str:
    # Column names from the constant list above; values are placeholders only.
    columns = ", ".join(_COLUMNS)
    marks = ", ".join("?" for _ in _COLUMNS)
    return f"INSERT INTO {_EVENTS.name} ({columns}) VALUES ({marks})"  # noqa: S608


@functools.lru_cache(maxsize=4)
def _processors(dialect: Dialect) -> tuple[Callable[[Any], Any] | None, ...]:
    # The columns' own bind processing (UUIDs, UTC timestamps), so rows are stored exactly as the ORM
    # stores them, without the statement machinery's cost per row.
    return tuple(_EVENTS.c[name].type.bind_processor(dialect) for name in _COLUMNS)


async def _sqlite_params(
    dialect: Dialect, tenant_id: uuid.UUID, segment: Segment, pause: Pause
) -> list[tuple[Any, ...]]:
    processors = _processors(dialect)
    recorded = segment.head.recorded_at
    params: list[tuple[Any, ...]] = []
    for start in range(0, len(segment.rows), ROWS_PER_PAUSE):
        if start:
            await pause()
        for row in segment.rows[start : start + ROWS_PER_PAUSE]:
            values = (tenant_id, row[0], recorded, *row[1:])
            params.append(
                tuple(
                    value if process is None else process(value)
                    for process, value in zip(processors, values, strict=True)
                )
            )
    return params


async def _lock_head(connection: AsyncConnection, tenant_id: uuid.UUID) -> Head:
    # SQLite has no row locks: the write comes first so the transaction holds the database's write lock
    # before it reads the head.
    values = {
        "tenant_id": tenant_id,
        "seq": GENESIS.seq,
        "hash": GENESIS.hash,
        "recorded_at": GENESIS.recorded_at,
        "compact_range": GENESIS.compact_range,
    }
    await connection.execute(
        sqlite_insert(_HEADS).values(values).on_conflict_do_nothing(index_elements=["tenant_id"])
    )
    columns = (_HEADS.c.seq, _HEADS.c.hash, _HEADS.c.recorded_at, _HEADS.c.compact_range)
    row = (await connection.execute(select(*columns).where(_HEADS.c.tenant_id == tenant_id))).one()
    return Head(int(row.seq), str(row.hash), row.recorded_at, dict(row.compact_range))


async def append_in(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    events: Sequence[NewEvent],
    heads: Heads,
    *,
    pause: Pause = yield_to_loop,
    entries: bool = True,
) -> list[dict[str, Any]]:
    """Append ``events`` inside the session's transaction (``appender.append`` on SQLite)."""
    connection = await session.connection()
    prepared = await prepare(connection.dialect, tenant_id, events, heads, pause=pause, entries=entries)
    return await insert(session, prepared, heads)


class SqliteAppender:
    """The event log's appends on SQLite (``appender.Appender``): one writer at a time, so a batch of
    several tenants is hashed and converted first, between requests, then inserted in one short
    transaction (others wait for the write lock meanwhile)."""

    #: One writer at a time: the tenants of a batch are written together, not at once.
    parallel = False

    def __init__(self, database: Database, heads: Heads) -> None:
        self.database = database
        self.heads = heads

    async def append_now(self, tenant_id: uuid.UUID, events: Sequence[NewEvent]) -> list[dict[str, Any]]:
        """Append ``events`` of one tenant in a transaction of its own; returns the stored entries."""
        async with self.database.session() as own:
            return await append_in(own, tenant_id, events, self.heads)

    async def append_batch(self, by_tenant: Mapping[uuid.UUID, Sequence[NewEvent]], pause: Pause) -> None:
        """Append every tenant's events in one transaction, prepared before it begins."""
        dialect = self.database.engine.dialect
        prepared = [
            await prepare(dialect, tenant_id, events, self.heads, pause=pause, entries=False)
            for tenant_id, events in by_tenant.items()
        ]
        async with self.database.session() as session:
            for item in prepared:
                await insert(session, item, self.heads)

    async def flush_wal(self) -> datetime | None:
        """Nothing to wait for: SQLite's commits are durable when they return."""
        return None
