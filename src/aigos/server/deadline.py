"""A request's deadline: work is stopped when it passes, and the answer says what became of the request.

The admission middleware runs each request under ``within(seconds)``. When the deadline passes first, the
request's task is cancelled (the transaction in progress rolls back) and the middleware answers 503:

- ``DEADLINE_EXCEEDED`` before any commit started: nothing was changed, retrying is safe;
- ``OUTCOME_UNKNOWN`` while a commit was under way: it may have been made. A commit is given at least
  ``COMMIT_GRACE_SECONDS`` (``commit_starts()``), so on a database that answers at all this is rare.

Once a commit has succeeded (``settled()``), the request is no longer cut short: the answer is known
(success) and is sent, late rather than replaced by a 503 that would be wrong. The database layer calls
both; outside a request (background work) they do nothing.

Not ``asyncio.timeout``: under load a library now and then swallows the cancellation (seen with the
PostgreSQL driver on a slow link), and the request then ran on for many seconds past its deadline. Here
the cancellation is repeated until the request gives up, and a request whose deadline has passed never
starts a commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

#: The least time a commit that starts is given to finish, even past the request's deadline.
COMMIT_GRACE_SECONDS = 1.0
#: How often a cancellation that was swallowed is repeated.
RECANCEL_SECONDS = 0.05


class Deadline:
    """One request's deadline (on ``task``), and whether a commit of the request is under way."""

    def __init__(self, task: asyncio.Task[object], seconds: float) -> None:
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._open = True
        self._expired = False
        self._cancels = 0
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(seconds, self._expire)
        #: A commit started and has not finished: if the deadline passes now, the outcome is unknown.
        self.committing = False

    def expired(self) -> bool:
        """Whether this deadline passed and stopped (or is stopping) the request."""
        return self._expired

    def remaining(self) -> float | None:
        """Seconds left before the request is stopped; None once it is no longer cut short."""
        if self._handle is None or self._expired:
            return None
        return max(0.0, self._handle.when() - self._loop.time())

    def commit_starts(self) -> None:
        """A commit is about to be sent: give it ``COMMIT_GRACE_SECONDS`` at least.

        A request already past its deadline does not commit: ``CancelledError`` (its transaction rolls back
        and it is answered ``DEADLINE_EXCEEDED``).
        """
        if not self._open:
            return
        if self._expired:
            raise asyncio.CancelledError
        self.committing = True
        at_least = self._loop.time() + COMMIT_GRACE_SECONDS
        if self._handle is not None and self._handle.when() < at_least:
            self._handle.cancel()
            self._handle = self._loop.call_at(at_least, self._expire)

    def settle(self) -> None:
        """The outcome is known (a commit succeeded, or the answer started): never cut short from here."""
        if not self._open:
            return
        self.committing = False
        self._stop_timer()

    def close(self) -> bool:
        """The request's block is left; True if it was this deadline that stopped it.

        Later calls (from tasks the request spawned) change nothing.
        """
        self._open = False
        self._stop_timer()
        for _ in range(self._cancels):
            self._task.uncancel()
        self._cancels = 0
        return self._expired

    def _expire(self) -> None:
        self._expired = True
        self._cancel()

    def _cancel(self) -> None:
        self._handle = None
        if not self._open:
            return
        self._task.cancel()
        self._cancels += 1
        self._handle = self._loop.call_later(RECANCEL_SECONDS, self._cancel)

    def _stop_timer(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


_current: ContextVar[Deadline | None] = ContextVar("aigos_deadline", default=None)


@asynccontextmanager
async def within(seconds: float) -> AsyncIterator[Deadline]:
    """Run the block under a deadline ``seconds`` from now; ``TimeoutError`` when it passes first.

    ``expired()`` on the yielded deadline tells its ``TimeoutError`` from any other.
    """
    task = asyncio.current_task()
    assert task is not None
    pending = task.cancelling()
    deadline = Deadline(task, seconds)
    token = _current.set(deadline)
    try:
        yield deadline
    except asyncio.CancelledError as cancelled:
        stopped = deadline.close()
        # Ours alone: a deadline. Another cancellation (the server stopping) stays a cancellation.
        if stopped and task.cancelling() <= pending:
            raise TimeoutError from cancelled
        raise
    finally:
        deadline.close()
        _current.reset(token)


def remaining() -> float | None:
    """Seconds the current request has left; None outside a request or once it is not cut short."""
    deadline = _current.get()
    return None if deadline is None else deadline.remaining()


def commit_starts() -> None:
    """The current request is about to commit (see ``Deadline.commit_starts``)."""
    if (deadline := _current.get()) is not None:
        deadline.commit_starts()


def settled() -> None:
    """The current request's commit succeeded (see ``Deadline.settle``)."""
    if (deadline := _current.get()) is not None:
        deadline.settle()
