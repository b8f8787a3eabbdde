"""FastAPI dependencies shared by every context's router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.audit.log import EventLog
from aigos.server.bus import Bus, RateLimiter
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.commit_hooks import run_after_commit
from aigos.server.runtime import Runtime
from aigos.server.tenancy.usage import UsageMeter


async def get_runtime(request: Request) -> Runtime:
    """The process's runtime, set up by the app's lifespan.

    ``async`` although it awaits nothing: FastAPI runs plain ``def`` dependencies in a worker thread, a
    hop that costs more than the rest of a policy check.
    """
    runtime: Runtime = request.app.state.runtime
    return runtime


# What several contexts use, each on its own: a route or service names the collaborators it needs, never
# the whole runtime. (``async`` for the reason given in ``get_runtime``.)


async def get_settings(request: Request) -> Settings:
    """The server's settings."""
    settings: Settings = request.app.state.runtime.settings
    return settings


async def get_database(request: Request) -> Database:
    """The database (for work outside the request's own transaction)."""
    database: Database = request.app.state.runtime.database
    return database


async def get_events(request: Request) -> EventLog:
    """The tamper-evident event log."""
    events: EventLog = request.app.state.runtime.events
    return events


async def get_bus(request: Request) -> Bus:
    """The bus shared by the replicas."""
    bus: Bus = request.app.state.runtime.bus
    return bus


async def get_usage(request: Request) -> UsageMeter:
    """The per-tenant usage counters."""
    usage: UsageMeter = request.app.state.runtime.usage
    return usage


async def get_limiter(request: Request) -> RateLimiter:
    """The rate limiter (shared across replicas; per process while the bus is down)."""
    limiter: RateLimiter = request.app.state.runtime.limiter
    return limiter


async def get_session(database: Annotated[Database, Depends(get_database)]) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the endpoint returns, rolled back if it raises.

    The dependency has ``scope="function"`` (see ``SessionDep``): the commit runs after the endpoint
    returns and *before* the response is sent, so a 2xx means durable on every replica, and a commit that
    fails becomes an error response instead of a success already on the wire. What was registered with
    ``after_commit`` runs once the commit succeeded, still before the response.
    """
    async with database.session() as session:
        yield session
    await run_after_commit(session)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
EventsDep = Annotated[EventLog, Depends(get_events)]
BusDep = Annotated[Bus, Depends(get_bus)]
UsageDep = Annotated[UsageMeter, Depends(get_usage)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
