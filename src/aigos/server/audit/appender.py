"""Appending to a tenant's chain: one interface, a PostgreSQL way and a SQLite way.

Appends to one tenant's log are strictly sequential across every process, so the sequence stays gap-free
and the chain linear; different tenants append in parallel. Both backends hash a segment onto the head this
process remembers (``chain.py``) and move the head only if it is still there:

- ``append_postgres.py``: one statement (``aigos_audit_append``) inserts the segment and moves the head,
  or answers the head it found, onto which the segment is rehashed; after a few misses the head is locked.
- ``append_sqlite.py``: the segment is prepared before the write transaction; inside it, which holds the
  database's write lock, it is rehashed only if the head moved meanwhile.

``append`` appends inside a caller's transaction on either; ``create`` gives the event log's writer its
``Appender``, for appends in transactions of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.audit import append_postgres, append_sqlite
from aigos.server.audit.chain import Heads, Pause, yield_to_loop
from aigos.server.audit.events import NewEvent
from aigos.server.db import Database


class Appender(Protocol):
    """What the event log's writer appends with, outside any caller's transaction."""

    heads: Heads

    @property
    def parallel(self) -> bool:
        """Whether tenants' batches are written at once, each in its own transaction (else all together)."""
        ...

    async def append_now(self, tenant_id: uuid.UUID, events: Sequence[NewEvent]) -> list[dict[str, Any]]:
        """Append ``events`` of one tenant, durable when this returns; returns the stored entries."""
        ...

    async def append_batch(self, by_tenant: Mapping[uuid.UUID, Sequence[NewEvent]], pause: Pause) -> None:
        """Append each tenant's events, hashing in pieces with ``pause`` between them; durable only once
        ``flush_wal`` has returned."""
        ...

    async def flush_wal(self) -> datetime | None:
        """Wait until every earlier append is durable; returns when the database server started (None
        where commits are durable anyway), which tells a restart in between."""
        ...


def create(database: Database, heads: Heads) -> Appender:
    """The ``Appender`` for ``database``'s kind."""
    if database.kind == "postgresql":
        return append_postgres.PostgresAppender(database, heads)
    return append_sqlite.SqliteAppender(database, heads)


async def append(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    events: Sequence[NewEvent],
    heads: Heads | None = None,
    *,
    pause: Pause = yield_to_loop,
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
        return await append_postgres.append_in(
            session, tenant_id, events, known, pause=pause, entries=entries
        )
    return await append_sqlite.append_in(session, tenant_id, events, known, pause=pause, entries=entries)
