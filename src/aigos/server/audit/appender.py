"""Appending to a tenant's chain: hash each entry onto the head, insert, move the head.

Appends to one tenant's log are strictly sequential across every process, so the sequence stays gap-free
and the chain linear; different tenants append in parallel.

On PostgreSQL one statement (``aigos_audit_append``, migration 0007) inserts a hashed segment and moves the
head, but only if the head is still where the segment was hashed onto. Each process remembers the heads it
last saw (``Heads``), so an append is one round trip when no other writer got there first; otherwise the
statement answers the head it found and the segment is rehashed onto that one. After a few such misses the
head row is locked first. On SQLite (one writer at a time) the segment is hashed onto the remembered head
before the write transaction begins; inside it, which holds the database's write lock, the head is read,
the segment rehashed only if the head moved meanwhile, the rows inserted and the head moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from sqlalchemy import Dialect, Table, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from aigos.core import auditlog
from aigos.core.canonical import parse
from aigos.core.merkle import CompactRange
from aigos.server.audit.events import NewEvent
from aigos.server.audit.models import AuditEvent, AuditHead
from aigos.server.db.types import utcnow

#: Entries hashed between two chances for other coroutines to run (about 25 µs of work).
YIELD_EVERY = 4
#: Rows serialised to JSON between two pauses when a segment is sent to PostgreSQL (about 100 µs of work).
ROWS_PER_PAUSE = 128
#: Rows converted to the SQLite driver's values between two pauses (about 60 µs of work).
SQLITE_ROWS_PER_PAUSE = 16
#: Optimistic appends tried before the head row is locked.
OPTIMISTIC_ATTEMPTS = 3
#: Tenants whose heads one process remembers; past that the memory starts over (a miss costs a round trip).
HEADS_KEPT = 10_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


@dataclass(frozen=True, slots=True)
class Head:
    """A tenant log's newest entry: what the next entry is hashed onto."""

    seq: int
    hash: str
    recorded_at: datetime
    compact_range: dict[str, Any]


GENESIS = Head(0, auditlog.GENESIS_HASH, EPOCH, CompactRange().to_json())


class Heads(dict[uuid.UUID, Head]):
    """The heads this process last appended or saw, per tenant (a hint: the database has the last word)."""

    def remember(self, tenant_id: uuid.UUID, head: Head) -> None:
        """Keep ``head`` as the tenant's, forgetting everything once too many tenants are kept."""
        if len(self) >= HEADS_KEPT and tenant_id not in self:
            self.clear()
        self[tenant_id] = head


@dataclass(slots=True)
class Segment:
    """Events hashed onto a head: the rows to insert, the entries as stored, and the head after them."""

    rows: list[tuple[Any, ...]]
    stored: list[dict[str, Any]]
    head: Head


#: Called between two groups of ``YIELD_EVERY`` entries: the event loop's chance to serve others.
Pause = Callable[[], Awaitable[None]]


async def _yield() -> None:
    await asyncio.sleep(0)


async def chain(
    tenant_id: uuid.UUID,
    head: Head,
    events: Sequence[NewEvent],
    *,
    pause: Pause = _yield,
    entries: bool = True,
) -> Segment:
    """Hash ``events`` (all of ``tenant_id``) in order onto ``head``.

    ``pause`` is awaited every ``YIELD_EVERY`` entries; without ``entries`` the segment's ``stored`` stays
    empty (a batch writer has no caller to return them to).
    """
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
            await pause()
        seq += 1
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
            "data": dict(event.data),
            "prev_hash": prev,
        }
        entry_prev = prev
        prev = auditlog.fields_hash(entry)
        compact.append(auditlog.entry_leaf(prev))
        if entries:
            stored.append({**entry, "hash": prev})
        rows.append(
            (
                seq,
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
                event.data_text,
                entry_prev,
                prev,
            )
        )
    return Segment(rows, stored, Head(seq, prev, recorded, compact.to_json()))


# -- PostgreSQL -----------------------------------------------------------------------------------------

#: Runs one statement and answers its one row (the caller's transaction, or autocommit).
Fetch = Callable[[str, tuple[Any, ...]], Awaitable[Sequence[Any]]]

# Placeholders only, built from a constant count.
_APPEND_SQL = f"SELECT * FROM aigos_audit_append({', '.join(f'${n}' for n in range(1, 10))})"  # noqa: S608
_HEAD_SQL = "SELECT * FROM aigos_audit_head($1, $2)"


class ContendedError(RuntimeError):
    """Other writers kept moving the head, even with it locked (two first appends of a tenant at once)."""


def _head_of(row: Sequence[Any]) -> Head:
    seq, hash_, recorded_at, compact = row
    if seq is None:
        return GENESIS
    if isinstance(compact, str | bytes):
        compact = orjson.loads(compact)
    return Head(int(seq), str(hash_), cast(datetime, recorded_at).astimezone(UTC), compact)


async def _append_args(
    tenant_id: uuid.UUID, head: Head, segment: Segment, relaxed: bool, pause: Pause
) -> tuple[Any, ...]:
    # The rows go as one JSON document, serialised in slices with pauses between them.
    parts: list[str] = []
    for start in range(0, len(segment.rows), ROWS_PER_PAUSE):
        if start:
            await pause()
        parts.append(orjson.dumps(segment.rows[start : start + ROWS_PER_PAUSE])[1:-1].decode())
    return (
        tenant_id,
        head.seq,
        head.hash,
        segment.head.seq,
        segment.head.hash,
        segment.head.recorded_at,
        orjson.dumps(segment.head.compact_range).decode(),
        relaxed,
        "[" + ",".join(parts) + "]",
    )


#: Opens what the locked attempt runs in: nothing inside a caller's transaction, a transaction otherwise.
Locking = Callable[[], AbstractAsyncContextManager[Any]]


async def append_postgres(
    fetch: Fetch,
    tenant_id: uuid.UUID,
    events: Sequence[NewEvent],
    heads: Heads,
    *,
    locking: Locking = contextlib.nullcontext,
    relaxed: bool = False,
    pause: Pause = _yield,
    entries: bool = True,
) -> list[dict[str, Any]]:
    """Append ``events`` with ``fetch``: onto the remembered head, then, if other writers kept moving it,
    with the head row locked inside ``locking()``. ``pause`` and ``entries`` are ``chain``'s."""
    options: dict[str, Any] = {"relaxed": relaxed, "pause": pause, "entries": entries}
    try:
        return await _attempt(fetch, tenant_id, events, heads, lock=False, **options)
    except ContendedError:
        async with locking():
            return await _attempt(fetch, tenant_id, events, heads, lock=True, **options)


async def _attempt(
    fetch: Fetch,
    tenant_id: uuid.UUID,
    events: Sequence[NewEvent],
    heads: Heads,
    *,
    lock: bool,
    relaxed: bool,
    pause: Pause,
    entries: bool,
) -> list[dict[str, Any]]:
    head = heads.get(tenant_id)
    # Locked, a second attempt can only be needed when two writers created the tenant's head at once.
    for _ in range(2 if lock else OPTIMISTIC_ATTEMPTS):
        if lock or head is None:
            head = _head_of(await fetch(_HEAD_SQL, (tenant_id, lock)))
        segment = await chain(tenant_id, head, events, pause=pause, entries=entries)
        row = await fetch(_APPEND_SQL, await _append_args(tenant_id, head, segment, relaxed, pause))
        if row[0]:
            heads.remember(tenant_id, segment.head)
            return segment.stored
        head = _head_of(row[1:])
        heads.remember(tenant_id, head)
    raise ContendedError(f"the head of tenant {tenant_id} kept moving")


# -- through a session (SQLite, and PostgreSQL inside a caller's transaction) ------------------------------


async def append(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    events: Sequence[NewEvent],
    heads: Heads | None = None,
    *,
    pause: Pause = _yield,
    entries: bool = True,
) -> list[dict[str, Any]]:
    """Append ``events`` (all of ``tenant_id``) in order inside the session's transaction.

    Returns the stored entries with their ``hash`` (none without ``entries``). The caller commits; until
    then the tenant's head stays locked, so keep the transaction short. ``pause`` is ``chain``'s.
    """
    if not events:
        return []
    # The connection, and with it the session's transaction, is begun before the first statement.
    connection = await session.connection()
    known = heads if heads is not None else Heads()
    if connection.dialect.name == "postgresql":

        async def fetch(sql: str, args: tuple[Any, ...]) -> Sequence[Any]:
            return (await connection.exec_driver_sql(sql, args)).one()

        # The append statement sets the tenant for the rest of this transaction, as set_tenant does.
        session.info["tenant_id"] = tenant_id
        # Already inside the caller's transaction: the locked attempt needs nothing more.
        return await append_postgres(fetch, tenant_id, events, known, pause=pause, entries=entries)
    dialect = connection.dialect
    prepared = await prepare_sqlite(dialect, tenant_id, events, known, pause=pause, entries=entries)
    return await append_sqlite(session, prepared, known)


# -- SQLite -------------------------------------------------------------------------------------------------


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


async def prepare_sqlite(
    dialect: Dialect,
    tenant_id: uuid.UUID,
    events: Sequence[NewEvent],
    heads: Heads,
    *,
    pause: Pause = _yield,
    entries: bool = True,
) -> Prepared:
    """Hash ``events`` onto the tenant's remembered head and convert its rows, before any lock is taken.

    SQLite has one writer at a time: what can be done before the write transaction begins is done here,
    with pauses, so the transaction itself (``append_sqlite``) holds the database's write lock only for the
    inserts, and the event loop is never held for long by converting a large batch.
    """
    prepared = Prepared(tenant_id, events, entries)
    onto = heads.get(tenant_id)
    if onto is not None:
        prepared.onto = onto
        prepared.segment = await chain(tenant_id, onto, events, pause=pause, entries=entries)
        prepared.params = await _sqlite_params(dialect, tenant_id, prepared.segment, pause)
    return prepared


async def append_sqlite(session: AsyncSession, prepared: Prepared, heads: Heads) -> list[dict[str, Any]]:
    """Insert a prepared segment inside the session's transaction, rehashed first if the head moved."""
    # Core statements on the session's connection: the ORM's unit of work would cost more than the
    # inserts, all of it on the event loop while the database's write lock is held.
    connection = await session.connection()
    tenant_id = prepared.tenant_id
    session.info["tenant_id"] = tenant_id
    current = await _lock_sqlite_head(connection, tenant_id)
    segment, params = prepared.segment, prepared.params
    onto = prepared.onto
    if segment is None or onto is None or (onto.seq, onto.hash) != (current.seq, current.hash):
        # Nothing remembered, or another writer came first: hash onto the head as it is now.
        segment = await chain(tenant_id, current, prepared.events, entries=prepared.entries)
        params = await _sqlite_params(connection.dialect, tenant_id, segment, _yield)
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
    for start in range(0, len(segment.rows), SQLITE_ROWS_PER_PAUSE):
        if start:
            await pause()
        for row in segment.rows[start : start + SQLITE_ROWS_PER_PAUSE]:
            values = (tenant_id, row[0], recorded, *row[1:])
            params.append(
                tuple(
                    value if process is None else process(value)
                    for process, value in zip(processors, values, strict=True)
                )
            )
    return params


async def _lock_sqlite_head(connection: AsyncConnection, tenant_id: uuid.UUID) -> Head:
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
