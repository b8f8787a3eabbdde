"""The in-process bus for the embedded single-process mode: plain dicts on one event loop.

Every operation runs without awaiting in between its reads and writes, so each is atomic with respect to
other coroutines without locks. Clocks are ``time.monotonic`` (wall-clock jumps must not reset limits).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from aigos.server.bus import gcra
from aigos.server.bus._subscription import DEFAULT_MAX_PENDING, QueueSubscription
from aigos.server.bus.base import (
    Bus,
    BusUnavailable,
    Cache,
    Counters,
    Ledger,
    Message,
    PubSub,
    RateLimiter,
    RateLimitResult,
    Reservation,
    Subscription,
    check_ttl,
)

V = TypeVar("V")

DEFAULT_CACHE_MAX_ENTRIES = 10_000
_NS = 1_000_000_000
#: Floating-point slack when comparing spend with a limit (a budget of 0.3 takes 0.1 three times).
LEDGER_TOLERANCE = 1e-9


class _Lifecycle:
    """The closed flag the four primitives of one bus share."""

    def __init__(self) -> None:
        self.closed = False

    def check(self) -> None:
        if self.closed:
            raise BusUnavailable("the bus is closed")


class _ExpiringDict(Generic[V]):
    """A dict whose entries carry a ``time.monotonic`` deadline (``math.inf``: never); expired = absent.

    Expired entries nobody reads again are swept every ``len`` operations or so, which keeps memory bounded
    by the live entries at O(1) amortised cost.
    """

    def __init__(self) -> None:
        self._data: dict[str, tuple[V, float]] = {}
        self._ops = 0

    def get(self, key: str, now: float) -> tuple[V, float] | None:
        self._tick(now)
        entry = self._data.get(key)
        if entry is not None and entry[1] <= now:
            del self._data[key]
            return None
        return entry

    def put(self, key: str, value: V, deadline: float) -> None:
        self._data[key] = (value, deadline)

    def pop(self, key: str, now: float) -> V | None:
        self._tick(now)
        entry = self._data.pop(key, None)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def _tick(self, now: float) -> None:
        self._ops += 1
        if self._ops < max(1024, len(self._data)):
            return
        self._ops = 0
        expired = [key for key, (_, deadline) in self._data.items() if deadline <= now]
        for key in expired:
            del self._data[key]


class MemoryPubSub(PubSub):
    """Fan-out to per-subscriber queues within this process."""

    def __init__(self, lifecycle: _Lifecycle, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._lifecycle = lifecycle
        self._max_pending = max_pending
        self._channels: dict[str, set[_MemorySubscription]] = {}

    async def publish(self, channel: str, data: bytes) -> int:
        """Deliver to every current subscriber of ``channel``; returns how many there were."""
        self._lifecycle.check()
        subscribers = self._channels.get(channel)
        if not subscribers:
            return 0
        message = Message(channel, bytes(data))
        for subscription in subscribers:
            subscription.deliver(message)
        return len(subscribers)

    def subscribe(self, *channels: str) -> Subscription:
        """A subscription to ``channels``; it starts when entered (``async with``) or first iterated."""
        return _MemorySubscription(self, channels, self._max_pending)

    def _attach(self, subscription: _MemorySubscription) -> None:
        self._lifecycle.check()
        for channel in subscription.channels:
            self._channels.setdefault(channel, set()).add(subscription)

    def _detach(self, subscription: _MemorySubscription) -> None:
        for channel in subscription.channels:
            subscribers = self._channels.get(channel)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._channels[channel]

    def subscriber_count(self, channel: str) -> int:
        """How many open subscriptions listen on ``channel`` (for diagnostics and tests)."""
        return len(self._channels.get(channel, ()))

    async def close_all(self) -> None:
        """End every open subscription (bus shutdown)."""
        subscriptions = {s for subscribers in self._channels.values() for s in subscribers}
        for subscription in subscriptions:
            await subscription.close()


class _MemorySubscription(QueueSubscription):
    def __init__(self, pubsub: MemoryPubSub, channels: tuple[str, ...], max_pending: int) -> None:
        super().__init__(channels, max_pending)
        self._pubsub = pubsub

    @property
    def connected(self) -> bool:
        """Always live while open: there is no connection to lose."""
        return self.opened

    async def _attach(self) -> None:
        self._pubsub._attach(self)

    def _detach(self) -> None:
        self._pubsub._detach(self)


class MemoryCounters(Counters):
    """Counters in a dict."""

    def __init__(self, lifecycle: _Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._values: _ExpiringDict[int] = _ExpiringDict()

    async def incr(self, key: str, amount: int = 1, ttl_seconds: float | None = None) -> int:
        """Add ``amount`` (negative to refund); ``ttl_seconds`` applies only when the key is created."""
        check_ttl(ttl_seconds)
        self._lifecycle.check()
        return self._add(key, amount, ttl_seconds, time.monotonic())

    async def incr_within(
        self, key: str, amount: int, limit: int, ttl_seconds: float | None = None
    ) -> tuple[bool, int]:
        """Add ``amount`` only if the result stays <= ``limit``; returns (applied, value after)."""
        check_ttl(ttl_seconds)
        self._lifecycle.check()
        now = time.monotonic()
        entry = self._values.get(key, now)
        current = entry[0] if entry is not None else 0
        if current + amount > limit:
            return False, current
        return True, self._add(key, amount, ttl_seconds, now)

    async def get(self, key: str) -> int:
        """The current value, 0 if missing."""
        self._lifecycle.check()
        entry = self._values.get(key, time.monotonic())
        return entry[0] if entry is not None else 0

    async def get_many(self, keys: Iterable[str]) -> dict[str, int]:
        """The current values of ``keys`` (0 for missing ones)."""
        self._lifecycle.check()
        now = time.monotonic()
        result: dict[str, int] = {}
        for key in keys:
            entry = self._values.get(key, now)
            result[key] = entry[0] if entry is not None else 0
        return result

    async def getdel(self, key: str) -> int:
        """Read and delete (0 if missing)."""
        self._lifecycle.check()
        value = self._values.pop(key, time.monotonic())
        return value if value is not None else 0

    def _add(self, key: str, amount: int, ttl_seconds: float | None, now: float) -> int:
        entry = self._values.get(key, now)
        if entry is None:
            value, deadline = amount, (now + ttl_seconds if ttl_seconds is not None else math.inf)
        else:
            value, deadline = entry[0] + amount, entry[1]
        self._values.put(key, value, deadline)
        return value


class MemoryRateLimiter(RateLimiter):
    """GCRA over ``time.monotonic_ns``; Python integers make the arithmetic exact at any scale."""

    def __init__(self, lifecycle: _Lifecycle | None = None) -> None:
        # Alone (no bus around it, as the fallback of a shared limiter) it is never closed.
        self._lifecycle = lifecycle or _Lifecycle()
        self._states: _ExpiringDict[tuple[int, int]] = _ExpiringDict()

    async def hit(self, key: str, limit: int, period_seconds: float, cost: int = 1) -> RateLimitResult:
        """Account one request of weight ``cost`` against ``key`` (see ``RateLimiter.hit``)."""
        gcra.check_args(limit, period_seconds, cost)
        self._lifecycle.check()
        now_ns = time.monotonic_ns()
        now = now_ns / _NS
        entry = self._states.get(key, now)
        outcome = gcra.step(
            now_ns,
            entry[0] if entry is not None else None,
            limit,
            gcra.period_units(period_seconds, _NS),
            cost,
        )
        if outcome.new_state is not None:
            # The state is worthless once the bucket is full again, so it lives exactly that long.
            self._states.put(key, outcome.new_state, now + outcome.reset_after / _NS)
        return RateLimitResult(
            allowed=outcome.allowed,
            limit=limit,
            remaining=outcome.remaining,
            reset_after=outcome.reset_after / _NS,
            retry_after=outcome.retry_after / _NS,
        )


class MemoryCache(Cache):
    """An LRU dict bounded to ``max_entries``; entries also expire after their TTL."""

    def __init__(self, lifecycle: _Lifecycle, max_entries: int = DEFAULT_CACHE_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._lifecycle = lifecycle
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        """The cached value, or None if missing or expired."""
        self._lifecycle.check()
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """Store ``value`` for ``ttl_seconds``, evicting the least recently used entries beyond the bound."""
        check_ttl(ttl_seconds)
        self._lifecycle.check()
        self._entries[key] = (bytes(value), time.monotonic() + ttl_seconds)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def delete(self, key: str) -> None:
        """Remove the entry if present."""
        self._lifecycle.check()
        self._entries.pop(key, None)

    def __len__(self) -> int:
        """Entries held, expired ones included until touched or evicted."""
        return len(self._entries)


class MemoryLedger(Ledger):
    """Ledger counters in a dict; expired ones disappear on read, as in Redis."""

    def __init__(self, lifecycle: _Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._values: dict[str, tuple[float, float | None]] = {}

    async def reserve(
        self, keys: Sequence[str], limits: Sequence[float | None], amount: float, *, commit: bool
    ) -> Reservation | None:
        """See ``Ledger.reserve``."""
        self._lifecycle.check()
        now = time.monotonic()
        spent: list[float] = []
        for key in keys:
            entry = self._values.get(key)
            if entry is None or (entry[1] is not None and entry[1] <= now):
                self._values.pop(key, None)
                return None
            spent.append(entry[0])
        fits = all(
            limit is None or used + amount <= limit + LEDGER_TOLERANCE
            for used, limit in zip(spent, limits, strict=True)
        )
        committed = fits and commit and amount > 0
        if committed:
            for key in keys:
                value, deadline = self._values[key]
                self._values[key] = (value + amount, deadline)
        return Reservation(tuple(spent), committed)

    async def seed(self, key: str, value: float, ttl_seconds: float | None) -> None:
        """See ``Ledger.seed``."""
        self._lifecycle.check()
        check_ttl(ttl_seconds)
        now = time.monotonic()
        entry = self._values.get(key)
        if entry is not None and (entry[1] is None or entry[1] > now):
            return
        self._values[key] = (value, None if ttl_seconds is None else now + ttl_seconds)


class MemoryBus(Bus):
    """The bus of a single process. Create it inside the event loop that will use it."""

    def __init__(
        self,
        *,
        cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self._lifecycle = _Lifecycle()
        self.pubsub: MemoryPubSub = MemoryPubSub(self._lifecycle, max_pending)
        self.counters: MemoryCounters = MemoryCounters(self._lifecycle)
        self.limiter: MemoryRateLimiter = MemoryRateLimiter(self._lifecycle)
        self.cache: MemoryCache = MemoryCache(self._lifecycle, cache_max_entries)
        self.ledger: MemoryLedger = MemoryLedger(self._lifecycle)

    @property
    def kind(self) -> str:
        """Always ``"memory"``."""
        return "memory"

    async def ping(self) -> None:
        """Raise ``BusUnavailable`` once closed; always usable before."""
        self._lifecycle.check()

    async def close(self) -> None:
        """End every subscription; later calls raise ``BusUnavailable``."""
        if self._lifecycle.closed:
            return
        self._lifecycle.closed = True
        await self.pubsub.close_all()
