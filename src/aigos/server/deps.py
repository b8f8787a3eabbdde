"""FastAPI dependencies shared by every context's router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.db.commit_hooks import run_after_commit
from aigos.server.runtime import Runtime


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
    await run_after_commit(session)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
