"""This process's part of the metrics: its own tallies sampled once a second, its live gauges dropped when
it stops (the others' scrapes must not count a worker that is gone)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aigos.server.background import cancel
from aigos.server.telemetry import metrics

if TYPE_CHECKING:
    from aigos.server.audit.records import Tallies
    from aigos.server.loop_lag import LoopLag
    from aigos.server.middleware.admission import Admission
    from aigos.server.runtime import Runtime

#: How often the sampled metrics are brought up to date (and so how stale another worker's can be).
SAMPLE_SECONDS = 1.0


class ProcessMetrics:
    """What ``metrics.Sampler`` reads of this process: its event log, streams, admission and loop lag."""

    def __init__(self, runtime: Runtime, admission: Admission, lag: LoopLag) -> None:
        self.runtime = runtime
        self.admission = admission
        self.lag = lag
        self.sampler = metrics.Sampler(self)
        self._task: asyncio.Task[None] | None = None

    def eventlog(self) -> tuple[Tallies, int, int, bool]:
        """The event log's tallies, queue depth, capacity and whether it is stalled."""
        events = self.runtime.events
        return events.tallies, events.depth, events.queue_size, events.stalled

    def streams(self) -> int:
        """Kill-switch streams open here."""
        return self.runtime.killswitch.connection_count

    def replicas(self) -> int:
        """Server processes sharing this database (1 when they cannot be counted)."""
        return self.runtime.killswitch.replicas()

    def refused(self) -> dict[str, int]:
        """What admission refused since the start, by code."""
        return dict(self.admission.refused)

    def lanes(self) -> Iterable[metrics.Lane]:
        """Admission's lanes."""
        return (self.admission.general, self.admission.killswitch)

    def worst_lag(self) -> float:
        """The longest loop pause since the previous sample."""
        return self.lag.take_worst()

    def start(self) -> None:
        """Forget workers that died unannounced, sample now and every ``SAMPLE_SECONDS``."""
        metrics.forget_exited_processes()
        self.sampler.sample()
        self._task = asyncio.create_task(self._run(), name="metrics-sampler")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            self.sampler.sample()

    async def stop(self) -> None:
        """Stop sampling; this worker's live gauges leave the totals."""
        await cancel(self._task)
        self._task = None
        metrics.forget_process(os.getpid())
