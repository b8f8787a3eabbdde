"""Throttles against guessing: failed sign-ins per client and per source address, anonymous signups.

One module for the three callers (the OAuth token endpoint, owner sign-in, signup), on the bus's GCRA
limiter, so a limit holds across every replica. Failed sign-ins are counted only when they fail, yet a
caller past its allowance is refused *before* its credential is checked: otherwise a guesser would still
learn from each answer whether its guess was right. Counting failures only keeps a busy, well-behaved client
unaffected however many tokens it asks for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request

from aigos.server.bus import Hit, RateLimiter
from aigos.server.config import Settings


class Throttled(Exception):
    """A caller spent its allowance; ``retry_after`` is in whole seconds (at least 1)."""

    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(f"Too many {what}; retry in {retry_after} s.")
        self.what = what
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        """The ``Retry-After`` header of the refusal."""
        return {"Retry-After": str(self.retry_after)}


@dataclass(frozen=True, slots=True)
class Bucket:
    """One allowance: ``limit`` events per ``period`` seconds, under ``key`` on the bus."""

    key: str
    limit: int
    period: float


def source_address(request: Request) -> str:
    """The address the request came from, as the server sees it (a proxy in front rewrites it)."""
    return request.client.host if request.client is not None else "unknown"


class Throttle:
    """Counts failures and signups on the shared limiter and refuses callers past their allowance."""

    def __init__(self, limiter: RateLimiter, settings: Settings) -> None:
        self._limiter = limiter
        self._settings = settings

    def sign_in(self, kind: str, principal: str, address: str) -> list[Bucket]:
        """The buckets of failed sign-ins of ``kind`` (``oauth``, ``login``) by one client and one address."""
        window = self._settings.auth_failure_window_seconds
        settings = self._settings
        return [
            Bucket(f"throttle:{kind}:who:{principal.lower()}", settings.auth_failures_per_client, window),
            Bucket(f"throttle:{kind}:addr:{address}", settings.auth_failures_per_address, window),
        ]

    def signup(self, address: str) -> list[Bucket]:
        """The bucket of anonymous signups from one address."""
        settings = self._settings
        key = f"throttle:signup:addr:{address}"
        return [Bucket(key, settings.signups_per_address, settings.signup_window_seconds)]

    async def check(self, buckets: Iterable[Bucket], what: str) -> None:
        """Raise ``Throttled`` if any bucket has no allowance left; spends nothing."""
        wanted = list(buckets)
        # Zero-cost hits read the buckets without changing them, all in one round trip.
        results = await self._limiter.hit_in_order([Hit(b.key, b.limit, b.period, 0) for b in wanted])
        for bucket, result in zip(wanted, results, strict=False):
            if result.remaining < 1:
                # One unit frees up once the bucket has drained to a period minus one emission interval.
                wait = result.reset_after - bucket.period + bucket.period / bucket.limit
                raise Throttled(what, max(1, math.ceil(wait)))

    async def record(self, buckets: Iterable[Bucket]) -> None:
        """Count one failure in every bucket (each must see it, even one already spent)."""
        for bucket in buckets:
            await self._limiter.hit(bucket.key, bucket.limit, bucket.period)

    async def spend(self, buckets: Iterable[Bucket], what: str) -> None:
        """Count one event in every bucket; raise ``Throttled`` at the first that has no allowance left."""
        for bucket in buckets:
            result = await self._limiter.hit(bucket.key, bucket.limit, bucket.period)
            if not result.allowed:
                raise Throttled(what, max(1, math.ceil(result.retry_after)))
