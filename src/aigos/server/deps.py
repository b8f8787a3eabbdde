"""FastAPI dependencies shared by every context's router."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.runtime import Runtime

AfterCommit = Callable[[], Awaitable[None]]
_AFTER_COMMIT = "after_commit"


async def get_runtime(request: Request) -> Runtime:
    """The process's runtime, set up by the app's lifespan.

    ``async`` although it awaits nothing: FastAPI runs plain ``def`` dependencies in a worker thread, a
    hop that costs more than the rest of a policy check.
    """
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_session(runtime: Annotated[Runtime, Depends(get_runtime)]) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the endpoint returns, rolled back if it raises.

    The dependency has ``scope="function"`` (see ``SessionDep``): the commit runs after the endpoint
    returns and *before* the response is sent, so a 2xx means durable on every replica, and a commit that
    fails becomes an error response instead of a success already on the wire. What was registered with
    ``after_commit`` runs once the commit succeeded, still before the response.
    """
    async with runtime.database.session() as session:
        yield session
    for callback in session.info.pop(_AFTER_COMMIT, ()):
        await callback()


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run ``callback`` once the request's transaction has committed (skipped if it rolls back).

    For announcements that other replicas act on by reading the database: heard before the commit, they
    would read the old state.
    """
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
