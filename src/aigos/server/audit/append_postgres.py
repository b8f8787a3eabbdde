"""Appending to a tenant's chain on PostgreSQL.

One statement (``aigos_audit_append``, migration 0007) inserts a hashed segment and moves the head, but only
if the head is still where the segment was hashed onto. An append is one round trip when no other writer
got there first; otherwise the statement answers the head it found and the segment is rehashed onto that
one. After a few such misses the head row is locked first.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.audit.chain import GENESIS, Head, Heads, Pause, Segment, chain, yield_to_loop
from aigos.server.audit.events import NewEvent
from aigos.server.db import Database

#: Rows serialised to JSON between two pauses when a segment is sent to PostgreSQL (about 100 µs of work).
ROWS_PER_PAUSE = 128
#: Optimistic appends tried before the head row is locked.
OPTIMISTIC_ATTEMPTS = 3
#: A transaction that writes a WAL record of its own and commits durably. Taking a transaction id is not
#: enough: PostgreSQL commits a transaction that wrote nothing else without flushing, whatever
#: ``synchronous_commit`` says (``RecordTransactionCommit``'s ``wrote_xlog``).
_FLUSH_WAL_SQL = (
    "SELECT set_config('synchronous_commit', 'on', true),"
    " pg_logical_emit_message(true, 'aigos.audit.flush', ''), pg_postmaster_start_time()"
)

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


async def append(
    fetch: Fetch,
    tenant_id: uuid.UUID,
    events: Sequence[NewEvent],
    heads: Heads,
    *,
    locking: Locking = contextlib.nullcontext,
    relaxed: bool = False,
    pause: Pause = yield_to_loop,
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


async def append_in(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    events: Sequence[NewEvent],
    heads: Heads,
    *,
    pause: Pause = yield_to_loop,
    entries: bool = True,
) -> list[dict[str, Any]]:
    """Append ``events`` inside the session's transaction (``appender.append`` on PostgreSQL)."""
    connection = await session.connection()

    async def fetch(sql: str, args: tuple[Any, ...]) -> Sequence[Any]:
        return (await connection.exec_driver_sql(sql, args)).one()

    # The append statement sets the tenant for the rest of this transaction, as set_tenant does.
    session.info["tenant_id"] = tenant_id
    # Already inside the caller's transaction: the locked attempt needs nothing more.
    return await append(fetch, tenant_id, events, heads, pause=pause, entries=entries)


class PostgresAppender:
    """The event log's appends on PostgreSQL, each in a transaction of its own (``appender.Appender``).

    An append is one statement, sent outside any explicit transaction (no BEGIN, no COMMIT round trips);
    only a writer that kept losing the race to other processes opens one, to lock the head.
    """

    #: Tenants are independent chains, each moved by its own transaction: several are written at once.
    parallel = True

    def __init__(self, database: Database, heads: Heads) -> None:
        self.database = database
        self.heads = heads

    async def append_now(self, tenant_id: uuid.UUID, events: Sequence[NewEvent]) -> list[dict[str, Any]]:
        """Append ``events`` of one tenant, durable when this returns; returns the stored entries."""
        async with self.database.driver() as driver:

            async def fetch(sql: str, args: tuple[Any, ...]) -> Any:
                return await driver.fetchrow(sql, *args)

            return await append(fetch, tenant_id, events, self.heads, locking=driver.transaction)

    async def append_batch(self, by_tenant: Mapping[uuid.UUID, Sequence[NewEvent]], pause: Pause) -> None:
        """Append each tenant's events in a transaction of its own, hashed in pieces between requests.

        A batch commits without waiting for the WAL flush: one flush for every batch (``flush_wal``), not
        one per tenant, is awaited before the journal lets its events go.
        """
        for tenant_id, events in by_tenant.items():
            async with self.database.driver() as driver:

                async def fetch(sql: str, args: tuple[Any, ...]) -> Any:
                    return await driver.fetchrow(sql, *args)

                await append(
                    fetch,
                    tenant_id,
                    events,
                    self.heads,
                    locking=driver.transaction,
                    relaxed=True,
                    pause=pause,
                    entries=False,
                )

    async def flush_wal(self) -> datetime | None:
        """Wait until what this process committed so far is durable; returns when the database server
        started, which tells a restart in between.

        A batch commits without waiting for the WAL flush; a transaction that writes a WAL record (a
        logical message, read by nobody) commits with ``synchronous_commit`` on, and its commit record
        follows every earlier one in the WAL, so once it returns they are all flushed too: unless the
        server restarted since they committed, and lost them.
        """
        async with self.database.driver() as driver:
            row = await driver.fetchrow(_FLUSH_WAL_SQL)
        started: datetime = row[2]
        return started
