"""The bus: pub/sub, atomic counters, rate limiting and a small cache shared by every server replica.

``create_bus(url)`` gives the Redis implementation (``aigos.server.bus.redis.RedisBus``) for a fleet, or
the in-process one (``MemoryBus``) for the embedded single-process mode when ``url`` is None.
"""

from aigos.server.bus.base import (
    Bus,
    BusUnavailable,
    Cache,
    Counters,
    Hit,
    Ledger,
    Message,
    MessageKind,
    PubSub,
    RateLimiter,
    RateLimitResult,
    Reservation,
    Subscription,
)
from aigos.server.bus.factory import DEFAULT_PREFIX, create_bus
from aigos.server.bus.fallback import FallbackRateLimiter
from aigos.server.bus.memory import MemoryBus

__all__ = [
    "DEFAULT_PREFIX",
    "Bus",
    "BusUnavailable",
    "Cache",
    "Counters",
    "FallbackRateLimiter",
    "Hit",
    "Ledger",
    "MemoryBus",
    "Message",
    "MessageKind",
    "PubSub",
    "RateLimitResult",
    "RateLimiter",
    "Reservation",
    "Subscription",
    "create_bus",
]
