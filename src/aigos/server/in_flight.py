"""The requests a server process is handling, so its background work can wait for a quiet moment."""

from __future__ import annotations

import asyncio


class InFlight:
    """Counts requests from their arrival to the start of their response.

    Background work that shares the event loop with requests (hashing a batch of events) waits in
    ``quiet()`` between small pieces, so a request meets at most one such piece instead of one at each
    of its own awaits. A response that streams (server-sent events) stops counting once it has started.
    """

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[asyncio.Future[None]] = []

    def enter(self) -> None:
        """A request arrived."""
        self.count += 1

    def leave(self) -> None:
        """A request's response started (or the request ended without one)."""
        self.count -= 1
        if self.count == 0 and self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                _release(waiter)

    async def quiet(self, within: float) -> None:
        """Return once no request is in flight, or after ``within`` seconds at the latest."""
        if self.count == 0:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(within, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
