"""The bus interfaces: pub/sub, atomic counters, rate limiting, a small cache and a budget ledger.

A bus lets several server replicas behave as one (kill-switch fan-out, cache invalidation, global rate
limits, budget counters). Two implementations exist: Redis for a fleet, in-process memory for the embedded
single-process mode. Both pass the same contract tests, so callers never branch on the kind.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

MessageKind = Literal["message", "resync"]


class BusUnavailable(Exception):
    """The bus cannot be reached (or is closed): callers should fail closed rather than guess."""


@dataclass(frozen=True, slots=True)
class Message:
    """One item yielded by a subscription.

    ``kind == "message"``: ``data`` was published on ``channel``.
    ``kind == "resync"``: the subscription to ``channel`` was (re-)established after an interruption (lost
    connection, or a consumer too slow to keep up), so messages may have been missed: reload the state
    behind ``channel`` from the database. A resync always precedes any later message on its channel.
    """

    channel: str
    data: bytes
    kind: MessageKind = "message"

    @property
    def is_resync(self) -> bool:
        """Whether this is a resynchronisation notice rather than published data."""
        return self.kind == "resync"


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    """The outcome of one rate-limit hit, shaped for ``Retry-After`` and ``RateLimit-*`` headers.

    ``remaining``: unit-cost requests that would be allowed right now (after this hit, if allowed).
    ``reset_after``: seconds until the bucket is fully replenished.
    ``retry_after``: seconds until this same request would be allowed; 0 when it was allowed.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


@dataclass(frozen=True, slots=True)
class Hit:
    """One request of weight ``cost`` against the bucket ``key`` of ``limit`` per ``period_seconds``."""

    key: str
    limit: int
    period_seconds: float
    cost: int = 1


class Subscription(ABC):
    """Messages published on some channels, from the moment the subscription is entered until it is closed.

    Use as ``async with pubsub.subscribe("a", "b") as sub: async for message in sub: ...``. Entering
    (or the first ``__anext__``) starts the subscription; anything published afterwards is delivered, or,
    if it may have been lost, replaced by a ``resync`` message for its channel. Iteration ends once the
    subscription (or its bus) is closed.
    """

    @property
    @abstractmethod
    def channels(self) -> tuple[str, ...]:
        """The channels, as given to ``subscribe`` (duplicates removed)."""

    @property
    @abstractmethod
    def connected(self) -> bool:
        """Whether delivery is live right now; False while a lost connection is being re-established.

        Lets a caller that must fail closed (a cached policy snapshot) stop trusting its cache before the
        ``resync`` arrives.
        """

    @abstractmethod
    async def open(self) -> None:
        """Start the subscription (idempotent); ``async with`` and iteration call it for you."""

    @abstractmethod
    async def close(self) -> None:
        """Stop delivery, free the subscription and end iteration (idempotent)."""

    @abstractmethod
    async def __anext__(self) -> Message:
        """The next message or resync notice; ``StopAsyncIteration`` once closed."""

    def __aiter__(self) -> AsyncIterator[Message]:
        """The subscription is its own iterator."""
        return self

    async def __aenter__(self) -> Self:
        """Start the subscription and return it."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the subscription."""
        await self.close()


class PubSub(ABC):
    """Fire-and-forget fan-out: every subscriber of a channel gets every message published on it."""

    @abstractmethod
    async def publish(self, channel: str, data: bytes) -> int:
        """Publish ``data`` on ``channel``; returns how many receivers got it if known, else 0.

        With Redis a receiver is a subscribed process (connection), not a local subscription.
        """

    @abstractmethod
    def subscribe(self, *channels: str) -> Subscription:
        """A subscription to ``channels``; it starts when entered (``async with``) or first iterated."""


class Counters(ABC):
    """Integer counters updated atomically across every process sharing the bus."""

    @abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl_seconds: float | None = None) -> int:
        """Add ``amount`` (negative to refund) and return the new value.

        ``ttl_seconds`` applies only when this call creates the key; later increments never extend it.
        """

    @abstractmethod
    async def incr_within(
        self, key: str, amount: int, limit: int, ttl_seconds: float | None = None
    ) -> tuple[bool, int]:
        """Add ``amount`` only if the result stays <= ``limit``, atomically; returns (applied, value after).

        When refused the counter is unchanged and the value returned is the current one. The TTL rule is
        the one of ``incr``.
        """

    @abstractmethod
    async def get(self, key: str) -> int:
        """The current value, 0 if the key does not exist."""

    @abstractmethod
    async def get_many(self, keys: Iterable[str]) -> dict[str, int]:
        """The current values of ``keys`` (0 for missing ones)."""

    @abstractmethod
    async def getdel(self, key: str) -> int:
        """Read and delete atomically (0 if missing): increments are either counted here or kept."""


class RateLimiter(ABC):
    """A GCRA (generic cell rate algorithm) limiter: bursts up to ``limit``, sustained ``limit / period``."""

    @abstractmethod
    async def hit(self, key: str, limit: int, period_seconds: float, cost: int = 1) -> RateLimitResult:
        """Account one request of weight ``cost`` (0 peeks without consuming) against ``key``.

        A denied request consumes nothing. ``cost`` above ``limit`` could never be allowed and raises
        ``ValueError``, as do a non-positive ``limit`` or ``period_seconds``.
        """

    async def hit_in_order(self, hits: Sequence[Hit]) -> list[RateLimitResult]:
        """Account ``hits`` one after another, stopping at the first refused: the results up to and
        including that one. Buckets after a refusal are left untouched, so a caller past a narrow limit does
        not spend a wider one. Backends with round trips do it in one."""
        results: list[RateLimitResult] = []
        for one in hits:
            result = await self.hit(one.key, one.limit, one.period_seconds, one.cost)
            results.append(result)
            if not result.allowed:
                break
        return results


class Cache(ABC):
    """A small shared byte cache for derived data; every entry expires."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The cached value, or None if missing or expired."""

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """Store ``value`` for ``ttl_seconds``, replacing any previous value."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the entry if present."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a ledger found: each counter's amount before the reservation, and whether it was added."""

    spent: tuple[float, ...]
    committed: bool


class Ledger(ABC):
    """Decimal counters drawn against limits, all at once or not at all: what budgets are made of.

    Counters must be seeded (``seed``) before use, because their truth lives in the database: a reservation
    that finds one missing (new, expired or lost with a Redis restart) changes nothing and returns None,
    and the caller seeds it from the database and tries again.
    """

    @abstractmethod
    async def reserve(
        self, keys: Sequence[str], limits: Sequence[float | None], amount: float, *, commit: bool
    ) -> Reservation | None:
        """Add ``amount`` to every counter if each stays within its limit (None: no limit) and ``commit``.

        Atomic across every process sharing the bus. ``commit=False`` only reads. None: a counter is missing.
        """

    @abstractmethod
    async def seed(self, key: str, value: float, ttl_seconds: float | None) -> None:
        """Create a counter holding ``value`` unless it exists (then nothing changes)."""


class Bus(ABC):
    """The five primitives behind one connection (or one process), plus health and shutdown."""

    pubsub: PubSub
    counters: Counters
    limiter: RateLimiter
    cache: Cache
    ledger: Ledger

    @property
    @abstractmethod
    def kind(self) -> str:
        """``"memory"`` or ``"redis"``."""

    @abstractmethod
    async def ping(self) -> None:
        """Return if the bus is usable, raise ``BusUnavailable`` (quickly) if not."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and end every open subscription (idempotent)."""

    async def __aenter__(self) -> Self:
        """The bus itself; closed on exit."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the bus."""
        await self.close()


def check_ttl(ttl_seconds: float | None) -> None:
    """Reject TTLs that are not a positive finite number of seconds (None means no expiry)."""
    if ttl_seconds is not None and not (ttl_seconds > 0 and math.isfinite(ttl_seconds)):
        raise ValueError(f"ttl_seconds must be a positive number of seconds, got {ttl_seconds!r}")


def check_channels(channels: tuple[str, ...]) -> tuple[str, ...]:
    """The channels without duplicates, in order; at least one is required."""
    if not channels:
        raise ValueError("subscribe() needs at least one channel")
    for channel in channels:
        if not isinstance(channel, str):
            raise TypeError(f"channel names are str, got {type(channel).__name__}")
    return tuple(dict.fromkeys(channels))
