"""Fixtures of the event-log tests: the test's database as the server opens it, the checkpoint key, and the
environment of server processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aigos.core.signing import Signer
from aigos.server.audit.log import EventLog, checkpoint_signer
from aigos.server.config import Settings
from aigos.server.db import Database
from tests.audit.helpers import open_database
from tests.conftest import ADMIN_TOKEN, SECRET_KEY


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


@pytest.fixture(params=["embedded", "postgres"])
def server_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment of an ``aigos serve`` process on each backend, ready for a burst of telemetry."""
    env = {
        "AIGOS_SECRET_KEY": SECRET_KEY,
        "AIGOS_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
        # Small batches: many flushes are under way when the signal comes.
        "AIGOS_AUDIT_BATCH_SIZE": "250",
        "AIGOS_DEFAULT_RATE_LIMIT_RPM": "100000",
    }
    if request.param == "postgres":
        env.update(request.getfixturevalue("replica_env"))
        env["AIGOS_ISSUER"] = "https://aigos.example.com"
    return env
