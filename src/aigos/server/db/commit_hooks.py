"""Work that must wait until a transaction has committed: announcements other replicas act on.

Heard before the commit, another replica reading the database would still see the old state; heard after
a rollback, it would act on a change that never happened. Whoever commits the session runs the hooks
(``server/deps.py``'s request session does, before the response is sent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

AfterCommit = Callable[[], Awaitable[None]]
_KEY = "after_commit"


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run ``callback`` once ``session``'s transaction has committed (never if it rolls back)."""
    session.info.setdefault(_KEY, []).append(callback)


async def run_after_commit(session: AsyncSession) -> None:
    """Run, in order, what was registered on ``session``; call once its transaction has committed."""
    for callback in session.info.pop(_KEY, ()):
        await callback()
