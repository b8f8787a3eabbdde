"""Database layer: migrations match the models, timestamps stay UTC, tenant context reaches PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, select, text

from aigos.server.config import Settings
from aigos.server.db import Base, Database
from aigos.server.db.migrate import current_revision, head_revision, include_name, upgrade
from aigos.server.db.types import UTCDateTime
from aigos.server.models import import_all_models
from aigos.server.platform.models import PlatformToken


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    await upgrade(settings.resolved_migration_url)
    db = Database(settings.resolved_database_url)
    yield db
    await db.dispose()


def _diff(connection: Connection) -> list[object]:
    import_all_models()
    options = {"compare_type": True, "include_name": include_name}
    context = MigrationContext.configure(connection, opts=options)
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_match_the_models(database: Database, settings: Settings) -> None:
    assert await current_revision(settings.resolved_database_url) == head_revision()
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_upgrade_is_idempotent(database: Database, settings: Settings) -> None:
    await upgrade(settings.resolved_migration_url)
    assert await current_revision(settings.resolved_database_url) == head_revision()


async def test_timestamps_round_trip_as_utc(database: Database) -> None:
    local = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    async with database.session() as session:
        session.add(PlatformToken(name="t", token_prefix="p", token_hash="h" * 64, created_at=local))
    async with database.session() as session:
        stored = await session.scalar(select(PlatformToken.created_at).where(PlatformToken.name == "t"))
    assert stored == local
    assert stored is not None
    assert stored.tzinfo == UTC


def test_naive_datetimes_are_refused() -> None:
    column = UTCDateTime()
    with pytest.raises(ValueError, match="naive"):
        column.process_bind_param(datetime(2026, 1, 1), Database("sqlite+aiosqlite://").engine.dialect)


async def test_session_rolls_back_on_error(database: Database) -> None:
    async def add_then_fail() -> None:
        async with database.session() as session:
            session.add(PlatformToken(name="gone", token_prefix="p", token_hash="g" * 64))
            await session.flush()
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        await add_then_fail()
    async with database.session() as session:
        assert await session.scalar(select(PlatformToken).where(PlatformToken.name == "gone")) is None


async def test_tenant_context_is_local_to_the_transaction(database: Database, backend: str) -> None:
    tenant = uuid.uuid4()
    async with database.session(tenant) as session:
        assert session.info["tenant_id"] == tenant
        if backend == "postgres":
            value = await session.scalar(text("SELECT current_setting('app.tenant_id', true)"))
            assert value == str(tenant)
    if backend == "postgres":
        async with database.session() as session:
            value = await session.scalar(text("SELECT current_setting('app.tenant_id', true)"))
            assert value in (None, "")


async def test_ping_fails_for_an_unreachable_database(tmp_path: Path) -> None:
    db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/none", timeout_seconds=0.5)
    with pytest.raises(OSError):
        await db.ping(1.0)
    await db.dispose()
