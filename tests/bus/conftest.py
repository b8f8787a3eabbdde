"""Fixtures for the bus tests: ``bus`` runs a test against both implementations.

Redis tests use a real server (``AIGOS_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) under a
unique key prefix per test, purged afterwards. An unreachable server is a failure, never a skip: the
Redis implementation is what production runs on.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from aigos.server.bus import Bus, MemoryBus
from aigos.server.bus.redis import RedisBus
from tests.bus.helpers import REDIS_URL

_redis_reachable: bool | None = None


def require_redis() -> None:
    """Fail the test if the test Redis cannot be reached."""
    global _redis_reachable
    if _redis_reachable is None:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
            _redis_reachable = True
        except redis.RedisError:
            _redis_reachable = False
        finally:
            client.close()
    if not _redis_reachable:
        pytest.fail(f"Redis at {REDIS_URL} is unreachable (scripts/services starts one)")


def new_prefix() -> str:
    """A key prefix no other test uses."""
    return f"aigostest:{uuid.uuid4().hex}:"


async def purge(prefix: str) -> None:
    """Delete every key under ``prefix``."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """A fresh bus of each kind, closed (and its Redis keys purged) afterwards."""
    if request.param == "memory":
        memory = MemoryBus()
        yield memory
        await memory.close()
        return
    require_redis()
    prefix = new_prefix()
    remote = RedisBus(REDIS_URL, prefix)
    try:
        yield remote
    finally:
        await remote.close()
        await purge(prefix)


@pytest.fixture
async def make_redis_bus() -> AsyncIterator[Callable[..., RedisBus]]:
    """A factory of Redis buses (``make(prefix=None, url=REDIS_URL, **options)``), all cleaned up after.

    Buses made with the same ``prefix`` behave like replicas of one deployment.
    """
    require_redis()
    made: list[RedisBus] = []

    def make(prefix: str | None = None, url: str = REDIS_URL, **options: Any) -> RedisBus:
        made.append(RedisBus(url, prefix if prefix is not None else new_prefix(), **options))
        return made[-1]

    try:
        yield make
    finally:
        for instance in made:
            await instance.close()
        for prefix in {instance.prefix for instance in made}:
            await purge(prefix)


@pytest.fixture
async def redis_admin() -> AsyncIterator[aioredis.Redis]:
    """A plain client to inspect or disturb the test Redis behind the bus's back."""
    require_redis()
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()
