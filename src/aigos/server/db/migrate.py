"""Apply Alembic migrations from code, on SQLite and PostgreSQL, safely from several processes at once."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same for every AIGOS process sharing a database.
_MIGRATION_LOCK_KEY = 0x41_49_47_4F_53  # "AIGOS"


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Schema comparison filter: the event log's partitions are managed at run time, not by models."""
    return not (type_ == "table" and name is not None and name.startswith("audit_events_"))


def alembic_config() -> Config:
    """An Alembic configuration pointing at the packaged migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        # Replicas starting together: one migrates, the others wait and then find nothing to do.
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    try:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    finally:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``."""
    from aigos.server.db.database import Database  # the engine setup (pragmas, dirs) lives there

    database = Database(url, pool_size=1, max_overflow=0)
    try:
        async with database.engine.connect() as conn:
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
    finally:
        await database.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None if it was never migrated."""
    from aigos.server.db.database import Database

    database = Database(url, pool_size=1, max_overflow=0)
    try:
        async with database.engine.connect() as conn:
            return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    finally:
        await database.dispose()
