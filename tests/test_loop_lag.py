"""The event-loop lag monitor: a pause of the loop shows on ``/metrics``, on both backends."""

from __future__ import annotations

import asyncio
import time

from httpx import AsyncClient

from aigos.server.loop_lag import LoopLag
from aigos.server.telemetry import metrics
from tests.helpers import prometheus_samples

#: Long enough that no scheduling noise could pass for it: the loop is held this long on purpose.
BLOCK_SECONDS = 0.3


def hold_the_loop(seconds: float = BLOCK_SECONDS) -> None:
    """Run on the loop's thread without yielding, as a compile done in one go would."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_a_blocked_loop_is_recorded_and_read_once() -> None:
    lag = LoopLag(tick=0.005)
    lag.start()
    try:
        await asyncio.sleep(0.02)
        lag.take_worst()
        hold_the_loop()
        await asyncio.sleep(0.02)
        assert lag.take_worst() >= BLOCK_SECONDS / 2
        assert lag.take_worst() == 0.0  # read, and so reset
    finally:
        await lag.stop()


def test_every_tick_is_counted_in_one_bucket() -> None:
    before = prometheus_samples(metrics.exposition().decode())
    lag = LoopLag()
    for late in (0.0, 0.0005, 0.003, 0.04, 0.2, 9.0):
        lag.record(late)
    lag.record(-0.001)  # a tick may fire a hair early: counted as on time
    after = prometheus_samples(metrics.exposition().decode())

    def grew(name: str) -> float:
        return after[name] - before[name]

    assert grew('aigos_event_loop_lag_seconds_bucket{le="0.001"}') == 3
    assert grew('aigos_event_loop_lag_seconds_bucket{le="0.05"}') == 5
    assert grew('aigos_event_loop_lag_seconds_bucket{le="+Inf"}') == 7
    assert grew("aigos_event_loop_lag_seconds_count") == 7
    assert lag.take_worst() == 9.0
    buckets = [name for name in after if name.startswith("aigos_event_loop_lag_seconds_bucket")]
    assert len(buckets) == len(metrics.LOOP_BUCKETS) + 1


async def test_metrics_show_the_longest_recent_loop_pause(client: AsyncClient) -> None:
    first = prometheus_samples((await client.get("/metrics")).text)
    assert "aigos_event_loop_lag_max_seconds" in first
    hold_the_loop()
    await asyncio.sleep(0.05)  # the monitor's next tick, late by the pause
    second = prometheus_samples((await client.get("/metrics")).text)
    assert second["aigos_event_loop_lag_max_seconds"] >= BLOCK_SECONDS / 2
    count = "aigos_event_loop_lag_seconds_count"
    late = 'aigos_event_loop_lag_seconds_bucket{le="0.1"}'
    assert second[count] > first[count]
    assert second[count] - second[late] > first[count] - first[late]  # a tick later than 0.1 s
