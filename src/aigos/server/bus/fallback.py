"""A rate limiter that keeps admitting requests while the shared one (Redis) cannot be reached.

Request admission (API keys' and tenants' limits, the sign-in and signup throttles) must not turn a Redis
outage into an outage of every route. While the shared limiter raises ``BusUnavailable``, each process
counts on GCRA buckets of its own instead, every limit divided by the number of server processes sharing
the load (``share()``, at least 1), rounded up: a client spread over the fleet by the load balancer is
admitted about as much as the shared limit would have admitted, and a client whose connections all land
on one process gets that process's part. The local buckets start full, so an outage may let through one
extra burst per process. Checks of what agents do (policy rate limits, budgets) do not come here: they
fail closed.

After a failure the shared limiter is left alone for ``retry_seconds``, then tried by one request at a
time until it answers: an outage costs each process one failed attempt per interval rather than one per
request (a Redis that times out instead of refusing would otherwise add its timeout to every request).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import structlog

from aigos.server.bus import gcra
from aigos.server.bus.base import BusUnavailable, Hit, RateLimiter, RateLimitResult
from aigos.server.bus.memory import MemoryRateLimiter

log = structlog.get_logger("aigos.bus.fallback")


def one() -> int:
    """The share of a process that has no peers (or cannot count them)."""
    return 1


class FallbackRateLimiter(RateLimiter):
    """``shared`` while it answers; this process's own buckets, limits divided by ``share()``, while not."""

    def __init__(
        self, shared: RateLimiter, share: Callable[[], int] = one, *, retry_seconds: float = 1.0
    ) -> None:
        self.shared = shared
        self.local = MemoryRateLimiter()
        self._share = share
        self._retry_seconds = retry_seconds
        #: ``time.monotonic`` before which the shared limiter is not tried again.
        self._shared_after = 0.0
        self._degraded = False
        #: Whether a request is finding out if the shared limiter is back (others stay local meanwhile).
        self._probing = False
        #: Hits answered by the local buckets since the process started.
        self.local_hits_total = 0

    @property
    def degraded(self) -> bool:
        """Whether the last attempt at the shared limiter failed (limits are per process meanwhile)."""
        return self._degraded

    async def hit(self, key: str, limit: int, period_seconds: float, cost: int = 1) -> RateLimitResult:
        """Account one request against ``key`` (see ``RateLimiter.hit``), locally while the bus is down."""
        (result,) = await self.hit_in_order([Hit(key, limit, period_seconds, cost)])
        return result

    async def hit_in_order(self, hits: Sequence[Hit]) -> list[RateLimitResult]:
        """See ``RateLimiter.hit_in_order``; locally, limits divided by ``share``, while the bus is down."""
        for one in hits:
            gcra.check_args(one.limit, one.period_seconds, one.cost)
        if not self._degraded or (not self._probing and time.monotonic() >= self._shared_after):
            probe = self._degraded
            self._probing = self._probing or probe
            try:
                results = await self.shared.hit_in_order(hits)
            except BusUnavailable as exc:
                self._shared_after = time.monotonic() + self._retry_seconds
                if not self._degraded:
                    self._degraded = True
                    log.warning("rate_limits_per_process", reason=str(exc), share=self.share)
            else:
                if self._degraded:
                    self._degraded = False
                    log.warning("rate_limits_shared_again", local_hits=self.local_hits_total)
                return results
            finally:
                if probe:
                    self._probing = False
        share = self.share
        local: list[Hit] = []
        for one in hits:
            local_limit = max(1, math.ceil(one.limit / share))
            # A cost the divided limit can never allow is capped rather than refused forever.
            local.append(Hit(one.key, local_limit, one.period_seconds, min(one.cost, local_limit)))
        results = await self.local.hit_in_order(local)
        self.local_hits_total += len(results)
        return results

    @property
    def share(self) -> int:
        """How many processes the limits are divided by right now (at least 1)."""
        return max(1, self._share())
