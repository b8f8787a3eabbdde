"""A request's deadline: the work before its first commit is cut short when the deadline passes.

The admission middleware runs each request under ``within(seconds)``. When the deadline passes first, the
request's task is cancelled and the middleware answers 503 ``DEADLINE_EXCEEDED``: the transaction in
progress rolls back, so nothing the request did was kept. Once a commit starts (``hold()``, called by the
database layer), the outcome is being decided and is no longer cut short: the request runs to its answer,
which then tells the truth, late rather than never.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

_current: ContextVar[asyncio.Timeout | None] = ContextVar("aigos_deadline", default=None)


@asynccontextmanager
async def within(seconds: float) -> AsyncIterator[asyncio.Timeout]:
    """Run the block under a deadline ``seconds`` from now; ``TimeoutError`` when it passes first.

    ``timeout.expired()`` on the yielded object tells this deadline's ``TimeoutError`` from any other.
    """
    async with asyncio.timeout(seconds) as timeout:
        token = _current.set(timeout)
        try:
            yield timeout
        finally:
            _current.reset(token)


def hold() -> None:
    """From here on the current request is not cut short: it is committing (or answering).

    Outside a request (background work), or once the deadline has passed, it does nothing. A task spawned
    by the request inherits the deadline and lifts it too, which errs on the side of letting it finish.
    """
    timeout = _current.get()
    if timeout is None or timeout.expired() or timeout.when() is None:
        return
    # RuntimeError: the request's block has already been left (a task that outlived its request).
    with contextlib.suppress(RuntimeError):
        timeout.reschedule(None)
