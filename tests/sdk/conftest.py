"""SDK fixtures: one live server per test module."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import BACKENDS, REDIS_URL, _admin, pg_url
from tests.sdk.live import LiveServer, live_server


def _live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    backend = getattr(request, "param", "embedded")
    env: dict[str, str] = {}
    database = None
    if backend == "postgres":
        template = request.getfixturevalue("pg_template")
        database = f"aigos_sdk_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(f'CREATE DATABASE "{database}" TEMPLATE "{template}"'))
        env = {
            "AIGOS_DATABASE_URL": pg_url(database),
            "AIGOS_REDIS_URL": REDIS_URL,
            "AIGOS_REDIS_PREFIX": f"aigostest:{uuid.uuid4().hex}:",
        }
    try:
        with live_server(tmp_path_factory.mktemp(f"sdk-{backend}"), env) as server:
            yield server
    finally:
        if database is not None:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One embedded ``aigos serve`` process shared by the SDK tests (each registers its own agents)."""
    yield from _live(request, tmp_path_factory)


@pytest.fixture(scope="module", params=BACKENDS)
def live_any(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """As ``live``, once per backend (the embedded one is ``live`` itself; then PostgreSQL + Redis)."""
    if request.param == "embedded":
        yield request.getfixturevalue("live")
    else:
        yield from _live(request, tmp_path_factory)
