"""Load is shed, not queued: a worker refuses what it cannot take at once, and stops what it cannot finish in
time before anything is committed. Health and the kill switch stay answerable meanwhile.

The database is made slow the way it gets slow in production: another session holds the lock every write
needs (SQLite's write lock; an exclusive lock on PostgreSQL's ``agents`` table).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response

from aigos.server.app import create_app
from aigos.server.config import Settings
from aigos.server.middleware.admission import Lane
from tests.conftest import PG_ADMIN_DSN
from tests.helpers import signup

SHED = {"OVERLOADED", "DEADLINE_EXCEEDED", "DATABASE_BUSY"}


@asynccontextmanager
async def writes_blocked(settings: Settings) -> AsyncIterator[None]:
    """Hold, from another connection, the lock that every agent registration waits for."""
    if settings.database_kind == "sqlite":
        holder = sqlite3.connect(settings.data_dir / "aigos.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    database = settings.resolved_database_url.rsplit("/", 1)[1]
    holder = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE agents IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await holder.close()


@pytest.fixture
def tight(settings: Settings) -> Settings:
    """Two requests at a time, a short wait for a turn, and a one-second deadline."""
    return settings.model_copy(
        update={"max_requests_in_flight": 2, "admission_wait_seconds": 0.1, "request_deadline_seconds": 1.0}
    )


@pytest.fixture
async def tight_app(tight: Settings) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    """The started app under ``tight`` settings and a client for it."""
    app = create_app(tight)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as http,
    ):
        yield app, http


def _outcome(response: Response) -> str:
    if response.status_code < 400:
        return str(response.status_code)
    body: dict[str, Any] = response.json()
    return f"{response.status_code} {body.get('code')}"


async def test_writes_past_the_lanes_are_shed_and_nothing_shed_is_kept(
    tight: Settings, tight_app: tuple[FastAPI, AsyncClient]
) -> None:
    app, client = tight_app
    tenant = await signup(client, "Shed")
    lanes = app.state.admission

    async with writes_blocked(tight):

        async def register(number: int) -> Response:
            return await client.post("/v1/agents", json={"name": f"bot-{number}"}, headers=tenant.headers)

        writes = [asyncio.create_task(register(number)) for number in range(8)]
        for _ in range(500):  # until both places are taken by writes waiting on the lock
            if lanes.general.active == 2:
                break
            await asyncio.sleep(0.01)
        # While the general lane is full: health answers, and the kill switch is let in (its own lane).
        health = await client.get("/health")
        trigger = await client.post(
            "/v1/kill-switch/trigger",
            json={"all_agents": True, "reason": "stop everything"},
            headers=tenant.headers,
        )
        answers = await asyncio.gather(*writes)

    outcomes = Counter(_outcome(answer) for answer in answers)
    assert health.status_code == 200
    assert _outcome(trigger) != "503 OVERLOADED"
    # Every write was answered, none with a 500: refused at the door, or stopped before committing.
    assert sum(outcomes.values()) == 8
    assert all(outcome.startswith("503 ") and outcome[4:] in SHED for outcome in outcomes), outcomes
    assert outcomes["503 OVERLOADED"] >= 4  # only two in flight and two waiting, ever
    for answer in answers:
        assert answer.headers["Retry-After"] == "1"
    # Nothing answered 503 was kept; the same writes succeed once the lock is gone.
    listed = await client.get("/v1/agents", headers=tenant.headers)
    assert listed.json()["total"] == 0
    again = await client.post("/v1/agents", json={"name": "bot-again"}, headers=tenant.headers)
    assert again.status_code == 201
    # Shedding shows in the metrics.
    scraped = (await client.get("/metrics")).text
    refused = next(line for line in scraped.splitlines() if 'refused_total{code="OVERLOADED"}' in line)
    assert float(refused.rsplit(" ", 1)[1]) >= 4


async def test_a_lane_admits_in_order_hands_places_over_and_turns_away_after_its_wait() -> None:
    lane = Lane("test", limit=1)
    assert await lane.enter(0.0)
    # Full: one may wait; a second in line is turned away at once.
    first = asyncio.create_task(lane.enter(5.0))
    await asyncio.sleep(0)
    assert not await lane.enter(5.0)
    # The place goes to the one waiting, not back to the lane.
    lane.leave()
    assert await first
    assert lane.active == 1
    # Nobody leaves: a waiter is turned away when its wait is over.
    assert not await lane.enter(0.05)
    lane.leave()
    assert lane.active == 0
