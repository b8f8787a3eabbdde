"""Work a server process does on a timer, always finished once more on shutdown (buffers must not be lost)."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from typing import Any

import structlog

log = structlog.get_logger("aigos.background")


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (``None`` ones are skipped) and wait until each has finished unwinding."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class PeriodicFlush(ABC):
    """Calls ``flush()`` every ``interval`` seconds in a task, and a last time on ``stop()``.

    A failed flush is logged and retried at the next tick; subclasses keep what they could not write.
    """

    name = "flush"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def flush(self) -> None:
        """Write what is buffered."""

    def start(self) -> None:
        """Begin flushing periodically."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Stop the timer and flush what remains."""
        await cancel(self._task)
        self._task = None
        await self._flush_logged()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:
            log.exception("flush_failed", component=self.name)
