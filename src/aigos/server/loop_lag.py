"""How long this process's event loop was held up: the measure behind "no request stalls the loop".

A task asks to wake every ``TICK_SECONDS`` and records how late it woke. Nothing else can run on the loop
while one callback runs, so a late tick is exactly a pause every other request (``/health`` included)
waited through: a compile done in one go, a slow pattern match, a garbage-collector pass. ``/metrics``
exposes it as ``aigos_event_loop_lag_max_seconds`` (the worst lateness since the previous scrape: read it
before and after a phase to get the phase's longest pause) and the histogram
``aigos_event_loop_lag_seconds`` of every tick's lateness. One wake-up per tick costs a few microseconds:
well under 0.1 % of a core.
"""

from __future__ import annotations

import asyncio
import bisect
import time

from aigos.server.background import cancel

TICK_SECONDS = 0.01
#: Histogram bucket bounds (seconds of lateness); the target is that no pause reaches 0.05.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLag:
    """The event-loop lag monitor of one process (see the module's docstring)."""

    def __init__(self, tick: float = TICK_SECONDS) -> None:
        self.tick = tick
        self._worst = 0.0
        #: Ticks per bucket (the last one past every bound), not cumulative.
        self._counts = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0
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
        self._counts[bisect.bisect_left(BUCKETS, late)] += 1
        self._sum += late

    def take_worst(self) -> float:
        """The worst lateness (seconds) since the previous call, and start over."""
        worst, self._worst = self._worst, 0.0
        return worst

    def exposition(self) -> list[str]:
        """The Prometheus text lines of the gauge (read, and so reset, here) and the histogram."""
        lines = [
            "# HELP aigos_event_loop_lag_max_seconds Longest event-loop pause since the previous scrape.",
            "# TYPE aigos_event_loop_lag_max_seconds gauge",
            f"aigos_event_loop_lag_max_seconds {self.take_worst():.6f}",
            f"# HELP aigos_event_loop_lag_seconds How late the loop's {self.tick:g} s ticker woke.",
            "# TYPE aigos_event_loop_lag_seconds histogram",
        ]
        total = 0
        for bound, count in zip((*BUCKETS, None), self._counts, strict=True):
            total += count
            le = "+Inf" if bound is None else f"{bound:g}"
            lines.append(f'aigos_event_loop_lag_seconds_bucket{{le="{le}"}} {total}')
        lines += [
            f"aigos_event_loop_lag_seconds_sum {self._sum:.6f}",
            f"aigos_event_loop_lag_seconds_count {total}",
        ]
        return lines
