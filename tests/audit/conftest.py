"""Fixtures of the event-log tests: the test's database as the server opens it, and the checkpoint key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aigos.core.signing import Signer
from aigos.server.audit.log import EventLog, checkpoint_signer
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import APP_ROLE
from aigos.server.db.migrate import upgrade


async def open_database(settings: Settings) -> Database:
    """The test's database, migrated, as the server uses it (the application role on PostgreSQL)."""
    await upgrade(settings.resolved_migration_url)
    role = APP_ROLE if settings.database_kind == "postgresql" else None
    return Database(settings.resolved_database_url, role=role)


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    """The migrated database of this test's backend, as the application role."""
    db = await open_database(settings)
    yield db
    await db.dispose()


@pytest.fixture
def signer(settings: Settings) -> Signer:
    """The checkpoint key the server would use."""
    return checkpoint_signer(settings.pepper)


@pytest.fixture
def events(database: Database, signer: Signer) -> EventLog:
    """An event log that is not started: tests flush and seal it themselves."""
    return EventLog(database, signer)
