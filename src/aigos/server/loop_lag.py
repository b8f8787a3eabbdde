"""How long this process's event loop was held up: the measure behind "no request stalls the loop".

A task asks to wake every ``TICK_SECONDS`` and records how late it woke. Nothing else can run on the loop
while one callback runs, so a late tick is exactly a pause every other request (``/metrics`` included)
waited through: a compile done in one go, a slow pattern match, a garbage-collector pass. Every tick's
lateness goes into the histogram ``aigos_event_loop_lag_seconds``; the worst since the last look is read by
the metrics sampler for ``aigos_event_loop_lag_max_seconds`` (the longest pause of the last few seconds).
One wake-up per tick costs a few microseconds: well under 0.1 % of a core.
"""

from __future__ import annotations

import asyncio
import time

from aigos.server.background import cancel
from aigos.server.telemetry import metrics

TICK_SECONDS = 0.01


class LoopLag:
    """The event-loop lag monitor of one process (see the module's docstring)."""

    def __init__(self, tick: float = TICK_SECONDS) -> None:
        self.tick = tick
        self._worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin ticking on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """Stop ticking."""
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        # Not ``loop.time()``: uvloop's counts whole milliseconds.
        while True:
            due = time.perf_counter() + self.tick
            await asyncio.sleep(self.tick)
            self.record(time.perf_counter() - due)

    def record(self, late: float) -> None:
        """Count one tick that woke ``late`` seconds after it was due."""
        late = max(late, 0.0)
        self._worst = max(self._worst, late)
        if metrics.enabled:
            metrics.LOOP_LAG.observe(late)

    def take_worst(self) -> float:
        """The worst lateness (seconds) since the previous call, and start over."""
        worst, self._worst = self._worst, 0.0
        return worst
