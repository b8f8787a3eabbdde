"""The async engine, one transaction-scoped session per unit of work, and the tenant-context hook."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from aigos.server.config import DatabaseKind

TENANT_SETTING = "app.tenant_id"
PLATFORM_SETTING = "app.platform_scope"
#: The PostgreSQL role the server acts as: no BYPASSRLS, only the privileges the migrations grant it.
APP_ROLE = "aigos_app"


class Database:
    """An async SQLAlchemy engine for one URL, SQLite or PostgreSQL.

    ``session(tenant_id)`` opens a transaction and, on PostgreSQL, sets ``app.tenant_id`` for that
    transaction only, which the row-level security policies read. On SQLite the services scope their
    queries by tenant themselves; the session carries the tenant in ``session.info`` for them.
    ``role`` (PostgreSQL) is set at connection start, so every connection acts as that role even when the
    URL names a superuser.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        max_overflow: int = 10,
        timeout_seconds: float = 5.0,
        role: str | None = None,
        echo: bool = False,
    ) -> None:
        self.url = url
        parsed = make_url(url)
        self.kind: DatabaseKind = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql"
        options: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
        if self.kind == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": timeout_seconds}
        else:
            server_settings = {"application_name": "aigos"}
            if role:
                server_settings["role"] = role
            options.update(
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=timeout_seconds,
                connect_args={
                    "timeout": timeout_seconds,
                    "command_timeout": 60,
                    "server_settings": server_settings,
                },
            )
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.kind == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self, tenant_id: uuid.UUID | None = None) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any exception."""
        async with self.sessions() as session, session.begin():
            if tenant_id is not None:
                await set_tenant(session, tenant_id)
            yield session

    async def ping(self, within_seconds: float = 2.0) -> None:
        """Raise if the database does not answer ``SELECT 1`` within ``within_seconds``."""
        async with asyncio.timeout(within_seconds):
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


async def set_tenant(session: AsyncSession, tenant_id: uuid.UUID, *, relaxed_commit: bool = False) -> None:
    """Bind the session's current transaction to one tenant (``SET LOCAL app.tenant_id`` on PostgreSQL).

    ``relaxed_commit``: the commit returns before its WAL record is flushed (``synchronous_commit = off``),
    for writes that are batched anyway; a PostgreSQL crash may lose the last few hundred milliseconds of
    them, never order or consistency.
    """
    session.info["tenant_id"] = tenant_id
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        # set_config(..., true) is SET LOCAL with a bind parameter: it ends with the transaction.
        params = {"name": TENANT_SETTING, "value": str(tenant_id)}
        if relaxed_commit:
            await session.execute(_SET_TENANT_RELAXED, params)
        else:
            await session.execute(_SET_TENANT, params)


_SET_TENANT = text("SELECT set_config(:name, :value, true)")
_SET_TENANT_RELAXED = text(
    "SELECT set_config(:name, :value, true), set_config('synchronous_commit', 'off', true)"
)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during a write; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


async def set_platform_scope(session: AsyncSession) -> None:
    """Let this transaction read every tenant's rows (platform-admin requests only)."""
    session.info["platform_scope"] = True
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT set_config(:name, 'on', true)"), {"name": PLATFORM_SETTING})
