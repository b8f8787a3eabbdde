"""The bus contract: every test runs against the in-process and the Redis implementation alike."""

from __future__ import annotations

import asyncio

import pytest

from aigos.server.bus import Bus, BusUnavailable, Hit, MemoryBus, Message
from aigos.server.bus._subscription import DEFAULT_MAX_PENDING
from tests.bus.helpers import eventually, next_message

# -- pub/sub ---------------------------------------------------------------------------------------------


async def test_every_subscriber_gets_every_message(bus: Bus) -> None:
    async with bus.pubsub.subscribe("news") as first, bus.pubsub.subscribe("news") as second:
        assert await bus.pubsub.publish("news", b"hello") >= 1
        await bus.pubsub.publish("news", b"again")
        for subscription in (first, second):
            assert await next_message(subscription) == Message("news", b"hello")
            assert await next_message(subscription) == Message("news", b"again", "message")


async def test_messages_arrive_in_publish_order(bus: Bus) -> None:
    async with bus.pubsub.subscribe("seq") as subscription:
        for i in range(50):
            await bus.pubsub.publish("seq", str(i).encode())
        received = [(await next_message(subscription)).data for _ in range(50)]
    assert received == [str(i).encode() for i in range(50)]


async def test_channels_are_isolated(bus: Bus) -> None:
    async with bus.pubsub.subscribe("a") as on_a, bus.pubsub.subscribe("b", "c") as on_bc:
        await bus.pubsub.publish("b", b"for b")
        await bus.pubsub.publish("z", b"for nobody")
        await bus.pubsub.publish("a", b"for a")
        await bus.pubsub.publish("c", b"for c")
        assert await next_message(on_a) == Message("a", b"for a")
        assert await next_message(on_bc) == Message("b", b"for b")
        assert await next_message(on_bc) == Message("c", b"for c")


async def test_publish_without_subscribers_reaches_nobody(bus: Bus) -> None:
    assert await bus.pubsub.publish("empty", b"x") == 0


async def test_close_ends_iteration_and_frees_the_subscription(bus: Bus) -> None:
    subscription = bus.pubsub.subscribe("gone")
    async with subscription:
        assert subscription.connected
        await bus.pubsub.publish("gone", b"one")
        assert await next_message(subscription) == Message("gone", b"one")
    assert not subscription.connected
    with pytest.raises(StopAsyncIteration):
        await next_message(subscription)
    await subscription.close()  # idempotent

    async def nobody_listens() -> bool:
        return await bus.pubsub.publish("gone", b"late") == 0

    await eventually(nobody_listens)


async def test_close_wakes_a_waiting_consumer(bus: Bus) -> None:
    subscription = bus.pubsub.subscribe("wake")
    await subscription.open()
    received: list[Message] = []

    async def consume() -> None:
        async for message in subscription:
            received.append(message)

    consumer = asyncio.create_task(consume())
    await bus.pubsub.publish("wake", b"first")
    await eventually(lambda: bool(received))
    await subscription.close()
    async with asyncio.timeout(5):
        await consumer
    assert received == [Message("wake", b"first")]


async def test_channel_stays_subscribed_while_another_subscriber_remains(bus: Bus) -> None:
    async with bus.pubsub.subscribe("shared") as staying:
        async with bus.pubsub.subscribe("shared") as leaving:
            await bus.pubsub.publish("shared", b"both")
            assert (await next_message(leaving)).data == b"both"
        await bus.pubsub.publish("shared", b"one left")
        assert (await next_message(staying)).data == b"both"
        assert (await next_message(staying)).data == b"one left"
        # Re-subscribing right after leaving works (and is not confused by the pending unsubscribe).
        async with bus.pubsub.subscribe("shared") as back:
            await bus.pubsub.publish("shared", b"back")
            assert (await next_message(back)).data == b"back"


async def test_iterating_starts_the_subscription(bus: Bus) -> None:
    subscription = bus.pubsub.subscribe("lazy")
    reader = asyncio.create_task(next_message(subscription))

    async def publish_reaches_it() -> bool:
        return await bus.pubsub.publish("lazy", b"hi") > 0

    await eventually(publish_reaches_it)
    assert (await reader).data == b"hi"
    await subscription.close()


async def test_closing_the_bus_ends_subscriptions(bus: Bus) -> None:
    subscription = bus.pubsub.subscribe("bye")
    await subscription.open()
    await bus.close()
    with pytest.raises(StopAsyncIteration):
        await next_message(subscription)
    with pytest.raises(BusUnavailable):
        await bus.pubsub.subscribe("after").open()


async def test_a_consumer_too_far_behind_gets_a_resync(bus: Bus) -> None:
    total = DEFAULT_MAX_PENDING + 5
    async with bus.pubsub.subscribe("firehose") as subscription:
        for i in range(total):
            await bus.pubsub.publish("firehose", str(i).encode())
        first = await next_message(subscription)
        assert first == Message("firehose", b"", "resync")
        assert first.is_resync
        rest = [(await next_message(subscription)).data for _ in range(5)]
    assert rest == [str(i).encode() for i in range(DEFAULT_MAX_PENDING, total)]


async def test_subscribe_needs_a_channel(bus: Bus) -> None:
    with pytest.raises(ValueError, match="at least one channel"):
        bus.pubsub.subscribe()


# -- counters --------------------------------------------------------------------------------------------


async def test_incr_and_get(bus: Bus) -> None:
    assert await bus.counters.get("hits") == 0
    assert await bus.counters.incr("hits") == 1
    assert await bus.counters.incr("hits", 5) == 6
    assert await bus.counters.get("hits") == 6


async def test_negative_increments_refund(bus: Bus) -> None:
    await bus.counters.incr("budget", 10)
    assert await bus.counters.incr("budget", -4) == 6
    assert await bus.counters.incr("budget", -10) == -4
    assert await bus.counters.incr("fresh", -3) == -3


async def test_ttl_expires_the_counter(bus: Bus) -> None:
    await bus.counters.incr("short", 3, ttl_seconds=0.2)
    await bus.counters.incr("forever", 3)
    await asyncio.sleep(0.35)
    assert await bus.counters.get("short") == 0
    assert await bus.counters.get("forever") == 3
    # An expired counter starts over.
    assert await bus.counters.incr("short", 1, ttl_seconds=10) == 1


async def test_ttl_is_set_at_creation_only(bus: Bus) -> None:
    await bus.counters.incr("window", 1, ttl_seconds=0.5)
    await asyncio.sleep(0.1)
    assert await bus.counters.incr("window", 1, ttl_seconds=30) == 2
    await asyncio.sleep(0.6)
    assert await bus.counters.get("window") == 0


async def test_get_many(bus: Bus) -> None:
    await bus.counters.incr("x", 2)
    await bus.counters.incr("y", -7)
    assert await bus.counters.get_many(["x", "y", "missing"]) == {"x": 2, "y": -7, "missing": 0}
    assert await bus.counters.get_many([]) == {}


async def test_getdel_reads_and_resets(bus: Bus) -> None:
    await bus.counters.incr("usage", 7)
    assert await bus.counters.getdel("usage") == 7
    assert await bus.counters.get("usage") == 0
    assert await bus.counters.getdel("usage") == 0
    assert await bus.counters.incr("usage") == 1


async def test_getdel_never_loses_increments(bus: Bus) -> None:
    increments = 300
    flushed: list[int] = []

    async def add() -> None:
        await bus.counters.incr("buffered")

    async def flush() -> None:
        flushed.append(await bus.counters.getdel("buffered"))

    tasks = [add() for _ in range(increments)]
    for i in range(0, increments, 15):
        tasks.insert(i, flush())
    await asyncio.gather(*tasks)
    assert sum(flushed) + await bus.counters.getdel("buffered") == increments


async def test_incr_within_refuses_past_the_limit(bus: Bus) -> None:
    assert await bus.counters.incr_within("spend", 4, limit=10) == (True, 4)
    assert await bus.counters.incr_within("spend", 6, limit=10) == (True, 10)
    assert await bus.counters.incr_within("spend", 1, limit=10) == (False, 10)
    assert await bus.counters.get("spend") == 10
    assert await bus.counters.incr_within("spend", -3, limit=10) == (True, 7)
    assert await bus.counters.incr_within("other", 11, limit=10) == (False, 0)
    assert await bus.counters.get("other") == 0


async def test_incr_within_never_exceeds_the_limit_under_concurrency(bus: Bus) -> None:
    results = await asyncio.gather(*(bus.counters.incr_within("race", 1, limit=30) for _ in range(50)))
    assert sum(applied for applied, _ in results) == 30
    assert sorted(value for applied, value in results if applied) == list(range(1, 31))
    assert all(value == 30 for applied, value in results if not applied)
    assert await bus.counters.get("race") == 30

    results = await asyncio.gather(*(bus.counters.incr_within("race3", 3, limit=100) for _ in range(50)))
    assert sum(applied for applied, _ in results) == 33
    assert await bus.counters.get("race3") == 99


async def test_incr_within_ttl(bus: Bus) -> None:
    assert await bus.counters.incr_within("daily", 5, limit=10, ttl_seconds=0.2) == (True, 5)
    await asyncio.sleep(0.35)
    assert await bus.counters.get("daily") == 0


async def test_invalid_ttl_is_rejected(bus: Bus) -> None:
    for ttl in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ttl_seconds"):
            await bus.counters.incr("k", 1, ttl_seconds=ttl)
    with pytest.raises(ValueError, match="ttl_seconds"):
        await bus.cache.set("k", b"v", 0)


# -- rate limiter ----------------------------------------------------------------------------------------


async def test_limiter_allows_a_burst_then_denies(bus: Bus) -> None:
    results = [await bus.limiter.hit("api", limit=5, period_seconds=1.0) for _ in range(5)]
    assert all(result.allowed for result in results)
    assert [result.remaining for result in results] == [4, 3, 2, 1, 0]
    assert all(result.retry_after == 0 and result.limit == 5 for result in results)
    assert all(0 < result.reset_after <= 1.0 for result in results)

    denied = await bus.limiter.hit("api", limit=5, period_seconds=1.0)
    assert not denied.allowed
    assert denied.remaining == 0
    assert 0 < denied.retry_after <= 0.2
    assert 0 < denied.reset_after <= 1.0


async def test_limiter_recovers_at_the_rate(bus: Bus) -> None:
    for _ in range(2):
        assert (await bus.limiter.hit("slow", limit=2, period_seconds=0.4)).allowed
    denied = await bus.limiter.hit("slow", limit=2, period_seconds=0.4)
    assert not denied.allowed
    await asyncio.sleep(denied.retry_after + 0.05)
    again = await bus.limiter.hit("slow", limit=2, period_seconds=0.4)
    assert again.allowed
    assert again.remaining == 0


async def test_limiter_cost(bus: Bus) -> None:
    first = await bus.limiter.hit("tokens", limit=10, period_seconds=60, cost=4)
    assert (first.allowed, first.remaining) == (True, 6)
    second = await bus.limiter.hit("tokens", limit=10, period_seconds=60, cost=4)
    assert (second.allowed, second.remaining) == (True, 2)
    denied = await bus.limiter.hit("tokens", limit=10, period_seconds=60, cost=4)
    assert (denied.allowed, denied.remaining) == (False, 2)
    assert denied.retry_after > 0
    # A refused request consumed nothing: a smaller one still fits.
    last = await bus.limiter.hit("tokens", limit=10, period_seconds=60, cost=2)
    assert (last.allowed, last.remaining) == (True, 0)


async def test_limiter_cost_zero_peeks(bus: Bus) -> None:
    await bus.limiter.hit("peek", limit=3, period_seconds=60)
    for _ in range(3):
        peek = await bus.limiter.hit("peek", limit=3, period_seconds=60, cost=0)
        assert (peek.allowed, peek.remaining) == (True, 2)


async def test_limiter_keys_are_independent(bus: Bus) -> None:
    assert (await bus.limiter.hit("alice", limit=1, period_seconds=60)).allowed
    assert not (await bus.limiter.hit("alice", limit=1, period_seconds=60)).allowed
    assert (await bus.limiter.hit("bob", limit=1, period_seconds=60)).allowed


async def test_limiter_handles_large_limits_exactly(bus: Bus) -> None:
    # 1 M per day and 7 per 3 s do not divide into whole time units: the burst must still be exact.
    big = await bus.limiter.hit("daily", limit=1_000_000, period_seconds=86_400, cost=999_999)
    assert (big.allowed, big.remaining) == (True, 1)
    results = [await bus.limiter.hit("odd", limit=7, period_seconds=3) for _ in range(8)]
    assert [result.allowed for result in results] == [True] * 7 + [False]


async def test_limiter_hits_in_order_and_stops_at_the_first_refusal(bus: Bus) -> None:
    narrow, wide = Hit("narrow", 2, 60), Hit("wide", 10, 60)
    for _ in range(2):
        first, second = await bus.limiter.hit_in_order([narrow, wide])
        assert (first.allowed, second.allowed) == (True, True)
    (refused,) = await bus.limiter.hit_in_order([narrow, wide])
    assert (refused.allowed, refused.limit) == (False, 2)
    assert refused.retry_after > 0
    # The refusal left the wider bucket untouched: two spent of ten.
    peek = await bus.limiter.hit("wide", 10, 60, cost=0)
    assert (peek.allowed, peek.remaining) == (True, 8)
    assert await bus.limiter.hit_in_order([]) == []


async def test_limiter_hits_in_order_agree_with_single_hits(bus: Bus) -> None:
    together = await bus.limiter.hit_in_order([Hit("a", 7, 3), Hit("b", 1_000_000, 86_400, 999_999)])
    assert [(r.allowed, r.limit, r.remaining) for r in together] == [(True, 7, 6), (True, 1_000_000, 1)]
    assert (await bus.limiter.hit("a", 7, 3, cost=0)).remaining == 6
    with pytest.raises(ValueError, match="exceeds limit"):
        await bus.limiter.hit_in_order([Hit("c", 5, 1, 6)])


async def test_limiter_rejects_impossible_requests(bus: Bus) -> None:
    with pytest.raises(ValueError, match="exceeds limit"):
        await bus.limiter.hit("k", limit=5, period_seconds=1, cost=6)
    with pytest.raises(ValueError, match="limit"):
        await bus.limiter.hit("k", limit=0, period_seconds=1)
    with pytest.raises(ValueError, match="period_seconds"):
        await bus.limiter.hit("k", limit=1, period_seconds=0)
    with pytest.raises(ValueError, match="cost"):
        await bus.limiter.hit("k", limit=1, period_seconds=1, cost=-1)


# -- cache -----------------------------------------------------------------------------------------------


async def test_cache_set_get_delete(bus: Bus) -> None:
    assert await bus.cache.get("policy") is None
    await bus.cache.set("policy", b"v1", ttl_seconds=30)
    assert await bus.cache.get("policy") == b"v1"
    await bus.cache.set("policy", b"v2", ttl_seconds=30)
    assert await bus.cache.get("policy") == b"v2"
    await bus.cache.delete("policy")
    assert await bus.cache.get("policy") is None
    await bus.cache.delete("policy")  # deleting a missing key is fine


async def test_cache_ttl(bus: Bus) -> None:
    await bus.cache.set("short", b"x", ttl_seconds=0.2)
    await bus.cache.set("long", b"y", ttl_seconds=30)
    await asyncio.sleep(0.35)
    assert await bus.cache.get("short") is None
    assert await bus.cache.get("long") == b"y"


async def test_memory_cache_is_a_bounded_lru() -> None:
    bus = MemoryBus(cache_max_entries=3)
    for key in ("a", "b", "c"):
        await bus.cache.set(key, key.encode(), ttl_seconds=30)
    assert await bus.cache.get("a") == b"a"  # now the most recently used
    await bus.cache.set("d", b"d", ttl_seconds=30)
    assert await bus.cache.get("b") is None
    assert [await bus.cache.get(key) for key in ("a", "c", "d")] == [b"a", b"c", b"d"]
    assert len(bus.cache) == 3
    await bus.close()


# -- health ----------------------------------------------------------------------------------------------


async def test_ping_and_close(bus: Bus) -> None:
    await bus.ping()
    assert bus.kind in ("memory", "redis")
    await bus.close()
    await bus.close()  # idempotent
    with pytest.raises(BusUnavailable):
        await bus.ping()
    with pytest.raises(BusUnavailable):
        await bus.counters.incr("after-close")


async def test_memory_forgets_expired_entries_nobody_reads_again() -> None:
    bus = MemoryBus()
    for i in range(3000):
        await bus.counters.incr(f"minute-{i}", ttl_seconds=0.05)
        await bus.limiter.hit(f"client-{i}", limit=10, period_seconds=0.05)
    await asyncio.sleep(0.1)
    for _ in range(3100):
        await bus.counters.get("other")
        await bus.limiter.hit("other", limit=10_000, period_seconds=60)
    # Private, but it is the point: memory stays bounded by the live entries.
    assert len(bus.counters._values._data) == 0
    assert len(bus.limiter._states._data) == 1
    await bus.close()
