"""The Redis bus: what lets many server replicas behave as one.

Every key and channel is prefixed (``prefix``), so deployments and test runs can share one Redis. Keys get
a short namespace after the prefix (``c:`` counters, ``rl:`` rate limits, ``kv:`` cache, ``b:`` budget
ledger); channels get the bare prefix.

Commands go through one bounded, health-checked connection pool and are never retried by redis-py: a reply
lost after the server executed ``INCRBY``, ``GETDEL`` or a reservation script must not be replayed (double
spend, lost usage). Only idempotent reads and writes get one retry on a broken connection. Read-modify-write
operations are Lua scripts (atomic on the server) timed by the server clock, so replicas with skewed clocks
agree.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, TypeVar

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aigos.server.bus import gcra
from aigos.server.bus._redis_pubsub import RedisPubSub
from aigos.server.bus._subscription import DEFAULT_MAX_PENDING
from aigos.server.bus.base import (
    Bus,
    BusUnavailable,
    Cache,
    Counters,
    Hit,
    Ledger,
    RateLimiter,
    RateLimitResult,
    Reservation,
    check_ttl,
)
from aigos.server.telemetry import metrics

T = TypeVar("T")

logger = logging.getLogger(__name__)

COUNTER_NS: Final = "c:"
LIMITER_NS: Final = "rl:"
CACHE_NS: Final = "kv:"
LEDGER_NS: Final = "b:"

# KEYS: counters. ARGV: amount, commit (1/0), then one limit per key ('' for none).
# Returns {status, spent...}: status -1 when counter ARGV[3]... is missing, else 1 if added, 0 if not.
# Spent values go back as strings: Lua numbers would be truncated to integers in the reply.
_RESERVE: Final = """
local amount = tonumber(ARGV[1])
local spent = {}
for i = 1, #KEYS do
  local raw = redis.call('GET', KEYS[i])
  if not raw then return {-1} end
  spent[i] = raw
end
local fits = true
for i = 1, #KEYS do
  local limit = ARGV[2 + i]
  if limit ~= '' and tonumber(spent[i]) + amount > tonumber(limit) + 1e-9 then fits = false end
end
local added = 0
if fits and ARGV[2] == '1' and amount > 0 then
  for i = 1, #KEYS do redis.call('INCRBYFLOAT', KEYS[i], ARGV[1]) end
  added = 1
end
local reply = {added}
for i = 1, #KEYS do reply[i + 1] = spent[i] end
return reply
"""

# Create-time TTL: EXISTS before INCRBY, so later increments never extend the expiry.
_INCR_TTL: Final = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if created then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
"""

# ARGV: amount, limit, ttl in ms (0: none). Returns {applied, value after}.
_INCR_WITHIN: Final = """
local raw = redis.call('GET', KEYS[1])
local current = 0
if raw then current = tonumber(raw) end
if current + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, current} end
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if not raw and tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, value}
"""

# gcra.step in Lua; read that function for the reasoning. State: "tat frac scale".
# One bucket per key, in order, stopping after the first refusal (later buckets are left untouched).
# ARGV: per key, limit, period (time units), cost, scale (units per second).
# Returns {allowed, remaining, reset_after, retry_after} per bucket judged, flattened, times in units.
_GCRA: Final = """
local t = redis.call('TIME')
local reply = {}
for i = 1, #KEYS do
  local a = (i - 1) * 4
  local limit = tonumber(ARGV[a + 1])
  local period = tonumber(ARGV[a + 2])
  local cost = tonumber(ARGV[a + 3])
  local scale = tonumber(ARGV[a + 4])
  local now = tonumber(t[1]) * scale + math.floor(tonumber(t[2]) * scale / 1000000)
  local tat, frac = now, 0
  local raw = redis.call('GET', KEYS[i])
  if raw then
    local s_tat, s_frac, s_scale = string.match(raw, '^(%d+) (%d+) (%d+)$')
    if s_tat then
      tat, frac, s_scale = tonumber(s_tat), tonumber(s_frac), tonumber(s_scale)
      if s_scale ~= scale then
        -- stored with another time unit: convert, rounding towards "less capacity"
        tat, frac = math.ceil(tat / s_scale * scale) + 1, 0
      end
    end
  end
  if frac >= limit then tat, frac = tat + 1, 0 end
  if tat < now then tat, frac = now, 0 end
  local total = frac + cost * period
  local new_tat = tat + math.floor(total / limit)
  local new_frac = total % limit
  local over = new_tat - period - now
  if over < 0 or (over == 0 and new_frac == 0) then
    local reset = new_tat - now
    if new_frac > 0 then reset = reset + 1 end
    if cost > 0 then
      local ttl = math.max(1, math.ceil(reset * 1000 / scale))
      redis.call('SET', KEYS[i], string.format('%d %d %d', new_tat, new_frac, scale), 'PX', ttl)
    end
    local remaining = math.floor(((now - new_tat + period) * limit - new_frac) / period)
    for _, v in ipairs({1, math.max(0, math.min(limit, remaining)), reset, 0}) do reply[#reply + 1] = v end
  else
    local remaining = math.floor(((now - tat + period) * limit - frac) / period)
    local reset = tat - now
    if frac > 0 then reset = reset + 1 end
    local retry = over
    if new_frac > 0 then retry = retry + 1 end
    for _, v in ipairs({0, math.max(0, math.min(cost - 1, remaining)), reset, retry}) do
      reply[#reply + 1] = v
    end
    return reply
  end
end
return reply
"""

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def _ttl_ms(ttl_seconds: float) -> int:
    return max(1, math.ceil(ttl_seconds * 1000))


class _Commands:
    """Runs commands, turning "Redis cannot be reached" into ``BusUnavailable``."""

    def __init__(self, client: Redis, url: str) -> None:
        self.client = client
        self.closed = False
        self._where = _redact(url)

    async def run(self, call: Callable[[], Awaitable[T]], *, idempotent: bool = False) -> T:
        if self.closed:
            raise BusUnavailable("the bus is closed")
        attempts = 2 if idempotent else 1
        for attempt in range(attempts):
            try:
                return await call()
            except RedisConnectionError as exc:
                # A pooled connection broken since its last use fails once; a fresh one may work.
                if attempt + 1 < attempts:
                    continue
                metrics.REDIS_ERRORS.inc()
                raise BusUnavailable(f"Redis at {self._where} is unreachable: {exc}") from exc
            except _UNREACHABLE as exc:
                metrics.REDIS_ERRORS.inc()
                raise BusUnavailable(f"Redis at {self._where} is unreachable: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _redact(url: str) -> str:
    """The URL without credentials, fit for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return f"{scheme}://{rest.rpartition('@')[2]}"


class RedisCounters(Counters):
    """Counters as Redis integers under ``<prefix>c:``."""

    def __init__(self, commands: _Commands, prefix: str) -> None:
        self._commands = commands
        self._client = commands.client
        self._prefix = prefix + COUNTER_NS
        self._incr_ttl = self._client.register_script(_INCR_TTL)
        self._incr_within = self._client.register_script(_INCR_WITHIN)

    async def incr(self, key: str, amount: int = 1, ttl_seconds: float | None = None) -> int:
        """Add ``amount`` (negative to refund); ``ttl_seconds`` applies only when the key is created."""
        check_ttl(ttl_seconds)
        name = self._prefix + key
        if ttl_seconds is None:
            return await self._commands.run(lambda: self._client.incrby(name, amount))
        args = [amount, _ttl_ms(ttl_seconds)]
        return int(await self._commands.run(lambda: self._incr_ttl(keys=[name], args=args)))

    async def incr_within(
        self, key: str, amount: int, limit: int, ttl_seconds: float | None = None
    ) -> tuple[bool, int]:
        """Add ``amount`` only if the result stays <= ``limit``, atomically: (applied, value after)."""
        check_ttl(ttl_seconds)
        keys = [self._prefix + key]
        args = [amount, limit, 0 if ttl_seconds is None else _ttl_ms(ttl_seconds)]
        applied, value = await self._commands.run(lambda: self._incr_within(keys=keys, args=args))
        return bool(applied), int(value)

    async def get(self, key: str) -> int:
        """The current value, 0 if missing."""
        name = self._prefix + key
        raw = await self._commands.run(lambda: self._client.get(name), idempotent=True)
        return int(raw) if raw is not None else 0

    async def get_many(self, keys: Iterable[str]) -> dict[str, int]:
        """The current values of ``keys`` (0 for missing ones), in one round trip."""
        wanted = list(keys)
        if not wanted:
            return {}
        names = [self._prefix + key for key in wanted]
        raws = await self._commands.run(lambda: self._client.mget(names), idempotent=True)
        return {key: int(raw) if raw is not None else 0 for key, raw in zip(wanted, raws, strict=True)}

    async def getdel(self, key: str) -> int:
        """Read and delete atomically (``GETDEL``), 0 if missing."""
        name = self._prefix + key
        raw = await self._commands.run(lambda: self._client.getdel(name))
        return int(raw) if raw is not None else 0


class RedisRateLimiter(RateLimiter):
    """GCRA in one Lua script per hit, state under ``<prefix>rl:``, expiring once the bucket is full again."""

    def __init__(self, commands: _Commands, prefix: str) -> None:
        self._commands = commands
        self._prefix = prefix + LIMITER_NS
        self._script = commands.client.register_script(_GCRA)

    async def hit(self, key: str, limit: int, period_seconds: float, cost: int = 1) -> RateLimitResult:
        """Account one request of weight ``cost`` against ``key`` (see ``RateLimiter.hit``)."""
        (result,) = await self.hit_in_order([Hit(key, limit, period_seconds, cost)])
        return result

    async def hit_in_order(self, hits: Sequence[Hit]) -> list[RateLimitResult]:
        """See ``RateLimiter.hit_in_order``: every bucket in one script, so one round trip."""
        if not hits:
            return []
        keys: list[str] = []
        args: list[int] = []
        scales: list[int] = []
        for one in hits:
            gcra.check_args(one.limit, one.period_seconds, one.cost)
            scale = gcra.pick_scale(one.limit, one.period_seconds)
            keys.append(self._prefix + one.key)
            args += [one.limit, gcra.period_units(one.period_seconds, scale), one.cost, scale]
            scales.append(scale)
        reply = await self._commands.run(lambda: self._script(keys=keys, args=args))
        return [
            RateLimitResult(
                allowed=bool(reply[at]),
                limit=one.limit,
                remaining=int(reply[at + 1]),
                reset_after=int(reply[at + 2]) / scale,
                retry_after=int(reply[at + 3]) / scale,
            )
            for at, one, scale in zip(range(0, len(reply), 4), hits, scales, strict=False)
        ]


class RedisCache(Cache):
    """Byte values under ``<prefix>kv:`` with Redis-side expiry (bounded by Redis' own memory policy)."""

    def __init__(self, commands: _Commands, prefix: str) -> None:
        self._commands = commands
        self._client = commands.client
        self._prefix = prefix + CACHE_NS

    async def get(self, key: str) -> bytes | None:
        """The cached value, or None if missing or expired."""
        name = self._prefix + key
        raw = await self._commands.run(lambda: self._client.get(name), idempotent=True)
        # decode_responses is never set on this client, so values come back as bytes.
        return raw if isinstance(raw, bytes) else None

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """Store ``value`` for ``ttl_seconds``."""
        check_ttl(ttl_seconds)
        name, data, ttl_ms = self._prefix + key, bytes(value), _ttl_ms(ttl_seconds)
        await self._commands.run(lambda: self._client.set(name, data, px=ttl_ms), idempotent=True)

    async def delete(self, key: str) -> None:
        """Remove the entry if present."""
        name = self._prefix + key
        await self._commands.run(lambda: self._client.delete(name), idempotent=True)


class RedisLedger(Ledger):
    """Ledger counters as Redis floats under ``<prefix>b:``; one Lua script per reservation."""

    def __init__(self, commands: _Commands, prefix: str) -> None:
        self._commands = commands
        self._client = commands.client
        self._prefix = prefix + LEDGER_NS
        self._script = self._client.register_script(_RESERVE)

    async def reserve(
        self, keys: Sequence[str], limits: Sequence[float | None], amount: float, *, commit: bool
    ) -> Reservation | None:
        """See ``Ledger.reserve``."""
        names = [self._prefix + key for key in keys]
        args = [
            repr(float(amount)),
            "1" if commit else "0",
            *("" if x is None else repr(float(x)) for x in limits),
        ]
        reply = await self._commands.run(lambda: self._script(keys=names, args=args))
        if int(reply[0]) < 0:
            return None
        return Reservation(tuple(float(raw) for raw in reply[1:]), bool(int(reply[0])))

    async def seed(self, key: str, value: float, ttl_seconds: float | None) -> None:
        """See ``Ledger.seed``."""
        check_ttl(ttl_seconds)
        name = self._prefix + key
        px = None if ttl_seconds is None else _ttl_ms(ttl_seconds)
        await self._commands.run(
            lambda: self._client.set(name, repr(float(value)), nx=True, px=px), idempotent=True
        )


class RedisBus(Bus):
    """The bus of a fleet of replicas sharing one Redis. No I/O happens until first use.

    ``socket_timeout`` bounds every command; ``ping_timeout`` bounds ``ping`` so health checks answer
    fast. Subscriptions of this bus share one pub/sub connection that reconnects on its own with
    ``reconnect_backoff`` (initial, maximum) seconds between attempts, and is probed every
    ``pubsub_ping_interval`` seconds so a silently dead connection is noticed.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "aigos:",
        *,
        socket_timeout: float = 3.0,
        connect_timeout: float = 2.0,
        ping_timeout: float = 1.0,
        max_connections: int = 64,
        health_check_interval: int = 30,
        subscribe_timeout: float | None = None,
        pubsub_ping_interval: float = 5.0,
        reconnect_backoff: tuple[float, float] = (0.05, 2.0),
        max_pending: int = DEFAULT_MAX_PENDING,
        client_name: str = "aigos",
    ) -> None:
        self.prefix = prefix
        self.client_name = client_name
        self._ping_timeout = ping_timeout
        # retries=0: see the module docstring; idempotent calls retry in _Commands instead.
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout,
            health_check_interval=health_check_interval,
            retry=Retry(NoBackoff(), 0),
            client_name=client_name,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
        )
        self._commands = _Commands(Redis(connection_pool=self._pool), url)
        # Its own pool only to build the subscriber connection from the same URL options. No health check
        # (a PING reply would be misread) and no socket_timeout: that connection probes its own liveness.
        subscriber_pool = ConnectionPool.from_url(
            url,
            retry=Retry(NoBackoff(), 0),
            client_name=f"{client_name}-pubsub",
            socket_timeout=None,
            socket_connect_timeout=connect_timeout,
        )
        client = self._commands.client
        self.pubsub: RedisPubSub = RedisPubSub(
            lambda channel, data: self._commands.run(lambda: client.publish(channel, data)),
            subscriber_pool,
            prefix,
            subscribe_timeout=socket_timeout if subscribe_timeout is None else subscribe_timeout,
            read_timeout=socket_timeout,
            handshake_timeout=connect_timeout + socket_timeout,
            ping_interval=pubsub_ping_interval,
            reconnect_backoff=reconnect_backoff,
            max_pending=max_pending,
        )
        self.counters: RedisCounters = RedisCounters(self._commands, prefix)
        self.limiter: RedisRateLimiter = RedisRateLimiter(self._commands, prefix)
        self.cache: RedisCache = RedisCache(self._commands, prefix)
        self.ledger: RedisLedger = RedisLedger(self._commands, prefix)

    @property
    def client(self) -> Redis:
        """The client every command but the subscriber's goes through (for instrumentation)."""
        return self._commands.client

    @property
    def kind(self) -> str:
        """Always ``"redis"``."""
        return "redis"

    async def ping(self) -> None:
        """Round-trip a PING within ``ping_timeout``; ``BusUnavailable`` if Redis does not answer."""
        try:
            async with asyncio.timeout(self._ping_timeout):
                await self._commands.run(self._commands.client.ping, idempotent=True)
        except TimeoutError as exc:
            raise BusUnavailable(f"Redis did not answer PING within {self._ping_timeout} s") from exc

    async def close(self) -> None:
        """End every subscription and close all connections (idempotent)."""
        if self._commands.closed:
            return
        self._commands.closed = True
        await self.pubsub.close()
        await self._commands.client.aclose()
        await self._pool.aclose()
