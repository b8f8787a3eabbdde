"""``create_bus``: the Redis bus when a URL is configured, the in-process one otherwise."""

from __future__ import annotations

from aigos.server.bus.base import Bus
from aigos.server.bus.memory import MemoryBus

DEFAULT_PREFIX = "aigos:"


def create_bus(redis_url: str | None, prefix: str = DEFAULT_PREFIX) -> Bus:
    """A bus for ``redis_url``, or an in-process one when it is None (embedded, single-process mode).

    No connection is opened here; call ``await bus.ping()`` at start-up to fail fast on a bad URL.
    """
    if redis_url is None:
        return MemoryBus()
    # Imported here so the embedded mode never loads redis-py.
    from aigos.server.bus.redis import RedisBus

    return RedisBus(redis_url, prefix)
