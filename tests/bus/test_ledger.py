"""The budget ledger: one contract for the in-process and the Redis implementation, plus Redis-only cases.

Counters are seeded from the database before use; a reservation adds an amount to several counters only if
every one stays within its limit, atomically across every process sharing the bus.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from aigos.server.bus import Bus, BusUnavailable
from aigos.server.bus.base import Reservation
from aigos.server.bus.redis import LEDGER_NS, RedisBus

MakeBus = Callable[..., RedisBus]
CLOSED_PORT_URL = "redis://127.0.0.1:6390/0"


async def spent(bus: Bus, *keys: str) -> tuple[float, ...]:
    """What the counters hold, read with a reservation that commits nothing."""
    found = await bus.ledger.reserve(list(keys), [None] * len(keys), 0, commit=False)
    assert found is not None, f"a counter of {keys} is missing"
    assert not found.committed
    return found.spent


# -- the contract ----------------------------------------------------------------------------------------


async def test_reserving_a_missing_counter_changes_nothing(bus: Bus) -> None:
    assert await bus.ledger.reserve(["missing"], [10], 1, commit=True) is None
    assert await bus.ledger.reserve(["missing"], [None], 0, commit=False) is None  # still not created
    await bus.ledger.seed("present", 2, None)
    assert await bus.ledger.reserve(["present", "missing"], [10, 10], 1, commit=True) is None
    assert await bus.ledger.reserve(["missing", "present"], [None, None], 1, commit=True) is None
    assert await spent(bus, "present") == (2,)


async def test_seed_then_reserve(bus: Bus) -> None:
    await bus.ledger.seed("budget", 1.5, None)
    assert await bus.ledger.reserve(["budget"], [10], 2, commit=True) == Reservation((1.5,), True)
    assert await bus.ledger.reserve(["budget"], [10], 2, commit=True) == Reservation((3.5,), True)
    assert await spent(bus, "budget") == (5.5,)
    found = await bus.ledger.reserve(["budget"], [10], 0, commit=False)
    assert found is not None
    assert all(isinstance(value, float) for value in found.spent)


async def test_seed_does_not_overwrite(bus: Bus) -> None:
    await bus.ledger.seed("budget", 5, None)
    await bus.ledger.seed("budget", 7, None)
    assert await spent(bus, "budget") == (5,)
    await bus.ledger.reserve(["budget"], [None], 1, commit=True)
    await bus.ledger.seed("budget", 0, None)
    assert await spent(bus, "budget") == (6,)


async def test_a_second_seed_keeps_the_first_expiry(bus: Bus) -> None:
    await bus.ledger.seed("daily", 1, 0.2)
    await bus.ledger.seed("daily", 1, None)
    await asyncio.sleep(0.35)
    assert await bus.ledger.reserve(["daily"], [None], 0, commit=False) is None


async def test_limits(bus: Bus) -> None:
    await bus.ledger.seed("unlimited", 0, None)
    assert await bus.ledger.reserve(["unlimited"], [None], 1e9, commit=True) == Reservation((0,), True)
    assert await spent(bus, "unlimited") == (1e9,)
    await bus.ledger.seed("capped", 9, None)
    # Exactly full fits; then not even a cent more.
    assert await bus.ledger.reserve(["capped"], [10], 1, commit=True) == Reservation((9,), True)
    assert await bus.ledger.reserve(["capped"], [10], 0.01, commit=True) == Reservation((10,), False)
    assert await bus.ledger.reserve(["capped"], [11], 0.01, commit=True) == Reservation((10,), True)
    assert await spent(bus, "capped") == (pytest.approx(10.01),)


async def test_a_counter_seeded_above_its_limit_refuses_everything(bus: Bus) -> None:
    await bus.ledger.seed("overspent", 60, None)
    assert await bus.ledger.reserve(["overspent"], [50], 1, commit=True) == Reservation((60,), False)
    assert await bus.ledger.reserve(["overspent"], [50], 0.001, commit=True) == Reservation((60,), False)
    assert await spent(bus, "overspent") == (60,)


async def test_several_counters_all_or_nothing(bus: Bus) -> None:
    for name, value in (("agent", 0), ("policy", 4), ("shared", 0)):
        await bus.ledger.seed(name, value, None)
    keys = ["agent", "policy", "shared"]
    assert await bus.ledger.reserve(keys, [10, 5, None], 2, commit=True) == Reservation((0, 4, 0), False)
    assert await spent(bus, *keys) == (0, 4, 0)
    assert await bus.ledger.reserve(keys, [10, 5, None], 1, commit=True) == Reservation((0, 4, 0), True)
    assert await spent(bus, *keys) == (1, 5, 1)
    # The full counter refuses even a tiny amount, and so nothing moves anywhere.
    assert await bus.ledger.reserve(keys, [10, 5, None], 0.01, commit=True) == Reservation((1, 5, 1), False)
    assert await spent(bus, "shared", "agent") == (1, 1)


async def test_commit_false_only_reads(bus: Bus) -> None:
    await bus.ledger.seed("budget", 1, None)
    assert await bus.ledger.reserve(["budget"], [10], 2, commit=False) == Reservation((1,), False)
    assert await bus.ledger.reserve(["budget"], [1.5], 2, commit=False) == Reservation((1,), False)
    assert await spent(bus, "budget") == (1,)


async def test_nothing_is_added_for_a_zero_or_negative_amount(bus: Bus) -> None:
    await bus.ledger.seed("budget", 3, None)
    assert await bus.ledger.reserve(["budget"], [10], 0, commit=True) == Reservation((3,), False)
    assert await bus.ledger.reserve(["budget"], [10], -1, commit=True) == Reservation((3,), False)
    assert await spent(bus, "budget") == (3,)


async def test_float_precision(bus: Bus) -> None:
    await bus.ledger.seed("budget", 0, None)
    for expected in (0, 0.1, 0.2):
        found = await bus.ledger.reserve(["budget"], [0.3], 0.1, commit=True)
        assert found is not None
        assert found.committed
        assert found.spent == (pytest.approx(expected, abs=1e-12),)
    refused = await bus.ledger.reserve(["budget"], [0.3], 0.1, commit=True)
    assert refused is not None
    assert not refused.committed
    assert (await spent(bus, "budget"))[0] == pytest.approx(0.3, abs=1e-12)
    await bus.ledger.seed("cents", 0, None)
    for _ in range(100):
        await bus.ledger.reserve(["cents"], [1], 0.01, commit=True)
    assert (await spent(bus, "cents"))[0] == pytest.approx(1, abs=1e-9)
    await bus.ledger.seed("exact", 12.345678901, None)
    assert (await spent(bus, "exact"))[0] == pytest.approx(12.345678901, abs=1e-12)


async def test_expired_counters_are_missing_again(bus: Bus) -> None:
    await bus.ledger.seed("daily", 3, 0.3)
    await bus.ledger.seed("lifetime", 3, None)
    await asyncio.sleep(0.1)
    # Reservations never extend the expiry set at seeding.
    assert await bus.ledger.reserve(["daily"], [10], 1, commit=True) == Reservation((3,), True)
    await asyncio.sleep(0.35)
    assert await bus.ledger.reserve(["daily"], [10], 1, commit=True) is None
    assert await bus.ledger.reserve(["lifetime", "daily"], [10, 10], 1, commit=True) is None
    assert await spent(bus, "lifetime") == (3,)
    await bus.ledger.seed("daily", 7, 10)  # an expired counter can be seeded anew
    assert await spent(bus, "daily") == (7,)


async def test_invalid_ttl_is_rejected(bus: Bus) -> None:
    for ttl in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="ttl_seconds"):
            await bus.ledger.seed("budget", 0, ttl)
    assert await bus.ledger.reserve(["budget"], [None], 0, commit=False) is None


async def test_concurrent_reservations_never_exceed_the_limit(bus: Bus) -> None:
    await bus.ledger.seed("race", 0, None)
    results = await asyncio.gather(*(bus.ledger.reserve(["race"], [50], 1, commit=True) for _ in range(100)))
    assert all(result is not None for result in results)
    committed = [result for result in results if result is not None and result.committed]
    assert len(committed) == 50
    assert sorted(result.spent[0] for result in committed) == list(range(50))
    assert await spent(bus, "race") == (50,)

    await bus.ledger.seed("x", 0, None)
    await bus.ledger.seed("y", 0, None)
    pair = await asyncio.gather(
        *(bus.ledger.reserve(["x", "y"], [50, 30], 1, commit=True) for _ in range(100))
    )
    assert sum(1 for result in pair if result is not None and result.committed) == 30
    assert await spent(bus, "x", "y") == (30, 30)


async def test_ledger_counters_are_apart_from_plain_counters(bus: Bus) -> None:
    await bus.counters.incr("same-name", 5)
    assert await bus.ledger.reserve(["same-name"], [None], 0, commit=False) is None
    await bus.ledger.seed("same-name", 1, None)
    assert await bus.counters.get("same-name") == 5


async def test_a_closed_bus_refuses_the_ledger(bus: Bus) -> None:
    await bus.ledger.seed("budget", 0, None)
    await bus.close()
    with pytest.raises(BusUnavailable):
        await bus.ledger.reserve(["budget"], [10], 1, commit=True)
    with pytest.raises(BusUnavailable):
        await bus.ledger.seed("budget", 0, None)


# -- Redis only ------------------------------------------------------------------------------------------


async def test_replicas_share_counters_and_never_exceed_the_limit(make_redis_bus: MakeBus) -> None:
    first = make_redis_bus()
    second = make_redis_bus(prefix=first.prefix)
    stranger = make_redis_bus()
    await first.ledger.seed("race", 0, None)
    await second.ledger.seed("race", 99, None)  # already there: the replica's seed changes nothing
    results = await asyncio.gather(
        *(bus.ledger.reserve(["race"], [50], 1, commit=True) for bus in (first, second) * 50)
    )
    assert sum(1 for result in results if result is not None and result.committed) == 50
    assert await spent(second, "race") == (50,)
    assert await stranger.ledger.reserve(["race"], [None], 0, commit=False) is None  # other prefix


async def test_a_counter_lost_by_redis_is_missing(
    make_redis_bus: MakeBus, redis_admin: aioredis.Redis
) -> None:
    bus = make_redis_bus()
    await bus.ledger.seed("budget", 4, None)
    assert await redis_admin.get(f"{bus.prefix}{LEDGER_NS}budget") is not None
    await redis_admin.delete(f"{bus.prefix}{LEDGER_NS}budget")  # a restart without persistence, an eviction
    assert await bus.ledger.reserve(["budget"], [10], 1, commit=True) is None
    await bus.ledger.seed("budget", 4, None)
    assert await bus.ledger.reserve(["budget"], [10], 1, commit=True) == Reservation((4,), True)


async def test_an_unreachable_redis_fails_closed(make_redis_bus: MakeBus) -> None:
    bus = make_redis_bus(url=CLOSED_PORT_URL)
    with pytest.raises(BusUnavailable):
        await bus.ledger.reserve(["budget"], [10], 1, commit=True)
    with pytest.raises(BusUnavailable):
        await bus.ledger.seed("budget", 0, None)
