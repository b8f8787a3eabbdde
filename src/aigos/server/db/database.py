"""The async engine, one transaction-scoped session per unit of work, and the tenant-context hook."""

from __future__ import annotations

import asyncio
import errno
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import await_only

from aigos.server import deadline
from aigos.server.config import DatabaseKind
from aigos.server.db.outage import DatabaseUnavailable, unavailable

TENANT_SETTING = "app.tenant_id"
PLATFORM_SETTING = "app.platform_scope"
#: The PostgreSQL role the server acts as: no BYPASSRLS, only the privileges the migrations grant it.
APP_ROLE = "aigos_app"
#: How long an embedded (SQLite) writer waits for another's write lock before giving up, by default (a
#: command-line tool); the server passes its request deadline: a request waits no longer than it may take.
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
#: How much the storage probe writes next to an embedded database: room for a few transactions' pages.
STORAGE_PROBE_BYTES = 64 * 1024
#: How long a write refused for lack of space keeps readiness down (PostgreSQL, whose disk we cannot probe).
STORAGE_FULL_HOLD_SECONDS = 10.0
#: How much sooner than the request's deadline PostgreSQL stops a statement itself: its error comes back
#: on a connection still fit for use, where cutting the statement off here costs the connection.
STATEMENT_MARGIN_SECONDS = 0.25
#: Session key: how long a request's statements may wait for a lock (``lock_timeout``), in seconds.
LOCK_WAIT = "lock_wait_seconds"


class Database:
    """An async SQLAlchemy engine for one URL, SQLite or PostgreSQL.

    ``session(tenant_id)`` opens a transaction and, on PostgreSQL, sets ``app.tenant_id`` for that
    transaction only, which the row-level security policies read. On SQLite the services scope their
    queries by tenant themselves; the session carries the tenant in ``session.info`` for them.
    ``role`` (PostgreSQL) is set at connection start, so every connection acts as that role even when the
    URL names a superuser.

    ``timeout_seconds`` bounds connecting; ``pool_timeout_seconds`` the wait for a free pooled connection,
    and on PostgreSQL a request's wait for a lock, after which the work is refused as ``DATABASE_BUSY``
    rather than queued (kept well under the request deadline). An outage met inside ``session()`` is
    raised as ``DatabaseUnavailable`` (a 503).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        max_overflow: int = 10,
        timeout_seconds: float = 5.0,
        pool_timeout_seconds: float | None = None,
        busy_timeout_seconds: float = SQLITE_BUSY_TIMEOUT_SECONDS,
        role: str | None = None,
        echo: bool = False,
    ) -> None:
        self.url = url
        parsed = make_url(url)
        self.kind: DatabaseKind = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql"
        #: The folder of the embedded database file (None in memory or on PostgreSQL): the storage probe's.
        self.folder: Path | None = None
        #: When (monotonic) a write was last refused for lack of space; None once a probe found room again.
        self.storage_full_at: float | None = None
        pool_timeout = timeout_seconds if pool_timeout_seconds is None else pool_timeout_seconds
        self.lock_wait_seconds = pool_timeout
        options: dict[str, Any] = {"echo": echo}
        if self.kind == "sqlite":
            options["pool_pre_ping"] = True
            database = parsed.database or ""
            if database and database != ":memory:":
                self.folder = Path(database).parent
                self.folder.mkdir(parents=True, exist_ok=True)
                # A file database has a queue pool (an in-memory one a single connection, no timeout).
                options["pool_timeout"] = pool_timeout
            # SQLite has one writer at a time: a writer waits for the lock up to the busy timeout (the
            # driver's ``timeout``) instead of failing at once with "database is locked"; each holds it for
            # one short transaction, a maintenance writer (retention, an export) for longer.
            options["connect_args"] = {"timeout": busy_timeout_seconds}
        else:
            server_settings = {"application_name": "aigos"}
            if role:
                server_settings["role"] = role
            options.update(
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
                connect_args={
                    "timeout": timeout_seconds,
                    "command_timeout": 60,
                    "server_settings": server_settings,
                },
            )
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.kind == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(self.engine.sync_engine.pool, "checkout", _ping_postgres)
            event.listen(self.engine.sync_engine.pool, "checkin", _note_checkin)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self, tenant_id: uuid.UUID | None = None) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any exception.

        An outage (busy, unreachable, out of space) is raised as ``DatabaseUnavailable``; the transaction
        rolled back, so nothing was written, unless PostgreSQL was lost during the commit itself
        (``OUTCOME_UNKNOWN``). The request's deadline gives a commit that starts time to finish.
        """
        committing = False
        try:
            async with self.sessions() as session, session.begin():
                session.info[LOCK_WAIT] = self.lock_wait_seconds
                if tenant_id is not None:
                    await set_tenant(session, tenant_id)
                yield session
                committing = True
                deadline.commit_starts()
            deadline.settled()
        except Exception as error:
            problem = self._unavailable(error, committing=committing)
            if problem is None or problem is error:
                raise
            raise problem from error

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[Any]:
        """A pooled connection's own asyncpg connection, outside any transaction (PostgreSQL only).

        Each statement sent on it is its own transaction unless the caller opens one with
        ``driver.transaction()``; no tenant is set.
        """
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            # Each statement sent here may commit on its own.
            deadline.commit_starts()
            try:
                yield raw.driver_connection
            except BaseException as error:
                # SQLAlchemy never saw the statement fail, so tell it: a closed connection must not go
                # back to the pool.
                if raw.driver_connection is None or raw.driver_connection.is_closed():
                    await connection.invalidate()
                outage = self._unavailable(error, committing=True) if isinstance(error, Exception) else None
                if outage is None or outage is error:
                    raise
                raise outage from error
            deadline.settled()

    async def ping(self, within_seconds: float = 2.0) -> None:
        """Raise if the database does not answer ``SELECT 1`` within ``within_seconds``."""
        async with asyncio.timeout(within_seconds):
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    async def check_storage(self) -> None:
        """Raise ``DatabaseUnavailable`` (``STORAGE_FULL``) if the database cannot write for lack of space.

        Embedded: a write next to the database file (``STORAGE_PROBE_BYTES``, flushed to disk), whose
        success also clears an earlier refusal. PostgreSQL, whose disk is not ours to probe: the outcome of
        the last writes, a refusal for lack of space counting for ``STORAGE_FULL_HOLD_SECONDS``.
        """
        if self.folder is not None:
            try:
                await asyncio.to_thread(_probe_write, self.folder / ".aigos-storage-probe")
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self.storage_full_at = time.monotonic()
                raise DatabaseUnavailable("STORAGE_FULL") from error
            self.storage_full_at = None
            return
        full_at = self.storage_full_at
        if full_at is not None and time.monotonic() - full_at < STORAGE_FULL_HOLD_SECONDS:
            raise DatabaseUnavailable("STORAGE_FULL")

    def _unavailable(self, error: Exception, *, committing: bool) -> DatabaseUnavailable | None:
        """``unavailable(error)``, noting a write refused for lack of space (see ``check_storage``).

        PostgreSQL lost during a commit (``committing``) may have committed: ``OUTCOME_UNKNOWN``. (A
        commit it refused is an answer, and SQLite's commit is all or nothing in this process.)
        """
        problem = unavailable(error)
        if problem is None:
            return None
        code = problem.instance_code
        if code == "STORAGE_FULL":
            self.storage_full_at = time.monotonic()
        if committing and self.kind == "postgresql" and code == "DATABASE_UNAVAILABLE":
            return DatabaseUnavailable("OUTCOME_UNKNOWN")
        return problem

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


async def set_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Bind the session's current transaction to one tenant (``SET LOCAL app.tenant_id`` on PostgreSQL).

    Inside a request it also bounds the transaction's statements by the request's deadline
    (``statement_timeout``) and its lock waits (``lock_timeout``), in the same round trip: PostgreSQL then
    refuses what the request could not finish in time, and the connection stays fit for the next one.
    """
    session.info["tenant_id"] = tenant_id
    if session.bind is None or session.bind.dialect.name != "postgresql":
        return
    # set_config(..., true) is SET LOCAL with a bind parameter: it ends with the transaction.
    left = deadline.remaining()
    if left is None:
        await session.execute(_SET_TENANT, {"name": TENANT_SETTING, "value": str(tenant_id)})
        return
    statement = max(left - STATEMENT_MARGIN_SECONDS, 0.05)
    lock = min(statement, session.info.get(LOCK_WAIT, statement))
    await session.execute(
        _SET_TENANT_WITHIN,
        {
            "name": TENANT_SETTING,
            "value": str(tenant_id),
            "statement": f"{round(statement * 1000)}ms",
            "lock": f"{round(lock * 1000)}ms",
        },
    )


_SET_TENANT = text("SELECT set_config(:name, :value, true)")
_SET_TENANT_WITHIN = text(
    "SELECT set_config(:name, :value, true), set_config('statement_timeout', :statement, true), "
    "set_config('lock_timeout', :lock, true)"
)


#: A connection given back this recently is handed out again without a probe (HikariCP's "alive bypass
#: window" has the same default): under load no checkout pays a round trip, and after an idle spell or a
#: database restart, which takes longer than this, every connection is probed before use.
PING_AFTER_IDLE_SECONDS = 0.5


def _note_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_postgres(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
    # SQLAlchemy's pre-ping wraps its probe in BEGIN and ROLLBACK (for pgbouncer's transaction mode): three
    # round trips on every checkout. One is enough to find a connection the server has closed; the pool
    # then replaces it and tries again.
    checked_in = record.info.get("checked_in")
    if checked_in is not None and time.monotonic() - checked_in < PING_AFTER_IDLE_SECONDS:
        return
    try:
        await_only(dbapi_connection.driver_connection.fetchrow(";"))
    except Exception as error:
        raise exc.DisconnectionError(str(error)) from error


def _probe_write(path: Path) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = memoryview(bytes(STORAGE_PROBE_BYTES))
        while left:
            left = left[os.write(descriptor, left) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
        path.unlink(missing_ok=True)


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
