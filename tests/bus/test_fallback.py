"""The admission limiter: the shared (Redis) buckets while Redis answers, this process's own while not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import pytest

from aigos.server.bus import FallbackRateLimiter, Hit, MemoryBus
from aigos.server.bus.redis import RedisBus
from tests.bus.helpers import REDIS_URL, StallingProxy
from tests.tcp_proxy import TcpProxy


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    """A cuttable path to the test Redis."""
    target = urlsplit(REDIS_URL)
    started = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    yield started
    await started.stop()


@pytest.fixture
def cut_off_bus(proxy: TcpProxy, make_redis_bus: Callable[..., RedisBus]) -> RedisBus:
    """A Redis bus that reaches Redis through ``proxy``."""
    return make_redis_bus(url=f"redis://127.0.0.1:{proxy.port}{urlsplit(REDIS_URL).path}")


async def test_limits_are_divided_per_process_while_redis_is_down_and_shared_again_after(
    proxy: TcpProxy, cut_off_bus: RedisBus
) -> None:
    # retry_seconds=0: every hit tries Redis first, so the test needs no waiting.
    limiter = FallbackRateLimiter(cut_off_bus.limiter, share=lambda: 2, retry_seconds=0)
    shared = [await limiter.hit("key", 4, 60) for _ in range(4)]
    assert all(result.allowed and result.limit == 4 for result in shared)
    assert not limiter.degraded

    proxy.sever()
    local = [await limiter.hit("key", 4, 60) for _ in range(3)]
    # Half of 4 for each of two processes, in buckets of this process's own.
    assert [result.allowed for result in local] == [True, True, False]
    assert {result.limit for result in local} == {2}
    assert local[-1].retry_after > 0
    assert limiter.degraded
    assert limiter.local_hits_total == 3

    proxy.restore()
    back = await limiter.hit("key", 4, 60)
    # The shared bucket is where it was: spent by the four hits before the outage.
    assert (back.allowed, back.limit) == (False, 4)
    assert not limiter.degraded
    assert limiter.local_hits_total == 3


async def test_a_limit_is_rounded_up_and_a_cost_capped_by_the_divided_limit(
    proxy: TcpProxy, cut_off_bus: RedisBus
) -> None:
    limiter = FallbackRateLimiter(cut_off_bus.limiter, share=lambda: 3, retry_seconds=0)
    proxy.sever()
    # 5 / 3 rounds up to 2; a cost of 4 (allowed by the real limit) is capped at 2 rather than refused.
    heavy = await limiter.hit("heavy", 5, 60, cost=4)
    assert (heavy.allowed, heavy.limit) == (True, 2)
    # A cost no limit could ever allow is still the caller's error, bus or not.
    with pytest.raises(ValueError, match="exceeds limit"):
        await limiter.hit("heavy", 5, 60, cost=6)


async def test_one_process_alone_keeps_the_whole_limit() -> None:
    bus = MemoryBus()
    limiter = FallbackRateLimiter(bus.limiter)
    await bus.close()  # a closed bus is unavailable, as a Redis that went away
    results = [await limiter.hit("key", 3, 60) for _ in range(4)]
    assert [result.allowed for result in results] == [True, True, True, False]
    assert limiter.degraded


async def test_a_stalled_redis_holds_up_one_request_at_once(make_redis_bus: Callable[..., RedisBus]) -> None:
    async with StallingProxy() as stalling:
        bus = make_redis_bus(url=stalling.url, socket_timeout=0.5)
        limiter = FallbackRateLimiter(bus.limiter, retry_seconds=0)
        assert (await limiter.hit("key", 10, 60)).allowed
        stalling.stall()
        # The first request finds out (waiting the bus's timeout); then one at a time looks again while
        # the others are answered here at once.
        assert (await limiter.hit("key", 10, 60)).allowed
        assert limiter.degraded
        probe = asyncio.create_task(limiter.hit("key", 10, 60))
        await asyncio.sleep(0)
        others = [await limiter.hit("key", 10, 60) for _ in range(3)]
        assert not probe.done()
        assert all(result.allowed and result.limit == 10 for result in others)
        assert (await probe).allowed
        assert limiter.local_hits_total == 5


async def test_hits_in_order_fall_back_to_divided_local_buckets(
    proxy: TcpProxy, cut_off_bus: RedisBus
) -> None:
    limiter = FallbackRateLimiter(cut_off_bus.limiter, share=lambda: 2, retry_seconds=0)
    shared = await limiter.hit_in_order([Hit("m", 4, 60), Hit("h", 40, 3600)])
    assert [(result.allowed, result.limit) for result in shared] == [(True, 4), (True, 40)]

    proxy.sever()
    local = [await limiter.hit_in_order([Hit("m", 4, 60), Hit("h", 40, 3600)]) for _ in range(3)]
    # Halves of 4 and 40; the third call stops at the spent narrow bucket, so five local hits in all.
    assert [[(r.allowed, r.limit) for r in results] for results in local] == [
        [(True, 2), (True, 20)],
        [(True, 2), (True, 20)],
        [(False, 2)],
    ]
    assert limiter.local_hits_total == 5
