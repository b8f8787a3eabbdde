"""Redis-only behaviour: key prefixes, unreachable servers, lost connections and several replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from aigos.server.bus import BusUnavailable, Message, create_bus
from aigos.server.bus.memory import MemoryBus
from aigos.server.bus.redis import RedisBus
from tests.bus.helpers import REDIS_URL, StallingProxy, eventually, next_message

MakeBus = Callable[..., RedisBus]
CLOSED_PORT_URL = "redis://127.0.0.1:6390/0"


async def kill_pubsub_connection(admin: aioredis.Redis, bus: RedisBus) -> int:
    """``CLIENT KILL TYPE pubsub``, narrowed to ``bus``'s connection so concurrent test runs are spared."""
    name = f"{bus.client_name}-pubsub"
    killed = 0
    for client in await admin.client_list(_type="pubsub"):
        if client["name"] == name:
            killed += await admin.client_kill_filter(_id=client["id"], _type="pubsub")
    return killed


async def test_create_bus_picks_the_implementation() -> None:
    memory = create_bus(None)
    assert isinstance(memory, MemoryBus)
    assert memory.kind == "memory"
    remote = create_bus(REDIS_URL, prefix="aigostest:factory:")
    assert isinstance(remote, RedisBus)
    assert (remote.kind, remote.prefix) == ("redis", "aigostest:factory:")
    await memory.close()
    await remote.close()


async def test_every_key_lives_under_the_prefix(make_redis_bus: MakeBus, redis_admin: aioredis.Redis) -> None:
    bus = make_redis_bus()
    await bus.counters.incr("calls", ttl_seconds=60)
    await bus.limiter.hit("api", limit=10, period_seconds=5)
    await bus.cache.set("snapshot", b"x", ttl_seconds=60)
    keys = sorted([key.decode() async for key in redis_admin.scan_iter(match=bus.prefix + "*")])
    assert keys == [bus.prefix + "c:calls", bus.prefix + "kv:snapshot", bus.prefix + "rl:api"]
    # Every key expires on its own: idle rate-limit state included.
    for key in keys:
        assert await redis_admin.pttl(key) > 0
    assert await redis_admin.pttl(bus.prefix + "rl:api") <= 5000


async def test_prefixes_isolate_deployments(make_redis_bus: MakeBus) -> None:
    one, two = make_redis_bus(), make_redis_bus()
    await one.counters.incr("shared-name", 5)
    assert await two.counters.get("shared-name") == 0
    await one.cache.set("shared-name", b"one", ttl_seconds=60)
    assert await two.cache.get("shared-name") is None
    assert (await one.limiter.hit("shared-name", limit=1, period_seconds=60)).allowed
    assert (await two.limiter.hit("shared-name", limit=1, period_seconds=60)).allowed

    async with one.pubsub.subscribe("events") as on_one:
        assert await two.pubsub.publish("events", b"from two") == 0
        await one.pubsub.publish("events", b"from one")
        assert await next_message(on_one) == Message("events", b"from one")


async def test_replicas_with_one_prefix_act_as_one(make_redis_bus: MakeBus) -> None:
    prefix = make_redis_bus().prefix
    first, second = make_redis_bus(prefix), make_redis_bus(prefix)

    async with first.pubsub.subscribe("kill") as on_first, second.pubsub.subscribe("kill") as on_second:
        assert await second.pubsub.publish("kill", b"agent-7") == 2  # one per process
        assert await next_message(on_first) == Message("kill", b"agent-7")
        assert await next_message(on_second) == Message("kill", b"agent-7")

    await first.counters.incr("usage", 3)
    assert await second.counters.incr("usage", 4) == 7

    # A global rate limit: the burst is shared, whichever replica serves the request.
    assert (await first.limiter.hit("key-1", limit=2, period_seconds=60)).allowed
    assert (await second.limiter.hit("key-1", limit=2, period_seconds=60)).allowed
    assert not (await first.limiter.hit("key-1", limit=2, period_seconds=60)).allowed

    # A global budget: concurrent reservations from both replicas never overshoot.
    results = await asyncio.gather(
        *(bus.counters.incr_within("budget", 1, limit=30) for bus in (first, second) * 25)
    )
    assert sum(applied for applied, _ in results) == 30
    assert await first.counters.get("budget") == 30


async def test_unreachable_redis_raises_bus_unavailable(make_redis_bus: MakeBus) -> None:
    bus = make_redis_bus(url=CLOSED_PORT_URL)
    with pytest.raises(BusUnavailable, match="unreachable"):
        await bus.ping()
    with pytest.raises(BusUnavailable):
        await bus.counters.incr("k")
    with pytest.raises(BusUnavailable):
        await bus.counters.getdel("k")
    with pytest.raises(BusUnavailable):
        await bus.limiter.hit("k", limit=1, period_seconds=1)
    with pytest.raises(BusUnavailable):
        await bus.cache.get("k")
    with pytest.raises(BusUnavailable):
        await bus.pubsub.publish("c", b"x")


async def test_error_messages_do_not_leak_credentials(make_redis_bus: MakeBus) -> None:
    bus = make_redis_bus(url="redis://user:s3cret@127.0.0.1:6390/0")
    with pytest.raises(BusUnavailable) as caught:
        await bus.ping()
    assert "s3cret" not in str(caught.value)


async def test_subscribing_while_redis_is_down_does_not_raise(make_redis_bus: MakeBus) -> None:
    bus = make_redis_bus(url=CLOSED_PORT_URL, subscribe_timeout=0.05)
    async with bus.pubsub.subscribe("later") as subscription:
        assert not subscription.connected
        assert not bus.pubsub.connected


async def test_subscription_survives_a_dropped_connection(
    make_redis_bus: MakeBus, redis_admin: aioredis.Redis
) -> None:
    bus = make_redis_bus(client_name=f"aigostest-{uuid.uuid4().hex}")
    async with bus.pubsub.subscribe("events") as subscription:
        await bus.pubsub.publish("events", b"before")
        assert await next_message(subscription) == Message("events", b"before")

        assert await kill_pubsub_connection(redis_admin, bus) == 1

        resync = await next_message(subscription)
        assert resync == Message("events", b"", "resync")
        # The resync is queued once Redis confirmed the new subscription: delivery is live again.
        assert subscription.connected
        await bus.pubsub.publish("events", b"after")
        assert await next_message(subscription) == Message("events", b"after")


async def test_every_subscription_and_channel_is_resynced(
    make_redis_bus: MakeBus, redis_admin: aioredis.Redis
) -> None:
    bus = make_redis_bus(client_name=f"aigostest-{uuid.uuid4().hex}")
    async with bus.pubsub.subscribe("a", "b") as both, bus.pubsub.subscribe("b") as only_b:
        for _ in range(2):  # twice: recovery must not be a one-off
            assert await kill_pubsub_connection(redis_admin, bus) == 1
            assert {(await next_message(both)).channel for _ in range(2)} == {"a", "b"}
            assert await next_message(only_b) == Message("b", b"", "resync")
        await bus.pubsub.publish("a", b"1")
        await bus.pubsub.publish("b", b"2")
        assert [await next_message(both) for _ in range(2)] == [Message("a", b"1"), Message("b", b"2")]
        assert await next_message(only_b) == Message("b", b"2")


async def test_a_subscription_confirmed_late_starts_with_a_resync(make_redis_bus: MakeBus) -> None:
    # open() gives up waiting at once, so it returns before Redis confirms: what was published in
    # between may be lost, which the resync announces.
    bus = make_redis_bus(subscribe_timeout=0.0)
    async with bus.pubsub.subscribe("late") as subscription:
        message = await next_message(subscription)
        assert message == Message("late", b"", "resync")
        await eventually(lambda: subscription.connected)
        await bus.pubsub.publish("late", b"now")
        assert await next_message(subscription) == Message("late", b"now")


async def test_unsubscribe_reaches_redis(make_redis_bus: MakeBus, redis_admin: aioredis.Redis) -> None:
    bus = make_redis_bus()
    channel = bus.prefix + "temp"
    async with bus.pubsub.subscribe("temp"):
        assert await redis_admin.pubsub_numsub(channel) == [(channel.encode(), 1)]

    async def unsubscribed() -> bool:
        return await redis_admin.pubsub_numsub(channel) == [(channel.encode(), 0)]

    await eventually(unsubscribed)


async def test_a_silently_dead_connection_is_detected_and_replaced(
    make_redis_bus: MakeBus, redis_admin: aioredis.Redis
) -> None:
    async with StallingProxy() as proxy:
        bus = make_redis_bus(
            url=proxy.url,
            socket_timeout=0.2,
            connect_timeout=0.2,
            pubsub_ping_interval=0.05,
            reconnect_backoff=(0.05, 0.2),
        )
        channel = bus.prefix + "alive"
        async with bus.pubsub.subscribe("alive") as subscription:
            await asyncio.sleep(0.2)  # several probes answered: a healthy idle connection stays up
            assert subscription.connected
            await redis_admin.publish(channel, b"1")
            assert await next_message(subscription) == Message("alive", b"1")

            proxy.stall()
            await eventually(lambda: not subscription.connected)
            proxy.resume()

            assert await next_message(subscription) == Message("alive", b"", "resync")
            await redis_admin.publish(channel, b"2")
            assert await next_message(subscription) == Message("alive", b"2")
        await bus.close()
