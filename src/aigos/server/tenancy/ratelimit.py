"""Request rate limits per API key and per tenant, global across replicas (the bus's GCRA limiter)."""

from __future__ import annotations

import asyncio
import math

from aigos.server.bus import Bus, RateLimitResult
from aigos.server.config import Settings
from aigos.server.errors import RateLimited
from aigos.server.tenancy.plans import plan_of
from aigos.server.tenancy.principal import Principal

MINUTE = 60.0
HOUR = 3600.0


async def enforce(bus: Bus, settings: Settings, principal: Principal) -> dict[str, str]:
    """Count one request against the key's and the tenant's limits.

    Returns the ``RateLimit-*`` headers of the limit closest to exhaustion, or raises ``RATE_LIMITED``
    (429 with ``Retry-After``) when any limit is spent. The platform admin is not limited.
    """
    if principal.tenant_id is None or principal.api_key_id is None:
        return {}
    plan = plan_of(principal.plan_tier)
    key, tenant = f"rl:key:{principal.api_key_id}", f"rl:tenant:{principal.tenant_id}"
    results = await asyncio.gather(
        bus.limiter.hit(key + ":m", principal.rate_limit_rpm or settings.default_rate_limit_rpm, MINUTE),
        bus.limiter.hit(key + ":h", principal.rate_limit_rph or settings.default_rate_limit_rph, HOUR),
        bus.limiter.hit(tenant + ":m", plan.tenant_rpm, MINUTE),
        bus.limiter.hit(tenant + ":h", plan.tenant_rph, HOUR),
    )
    denied = [result for result in results if not result.allowed]
    if denied:
        worst = max(denied, key=lambda result: result.retry_after)
        headers = headers_for(worst)
        headers["Retry-After"] = str(max(1, math.ceil(worst.retry_after)))
        raise RateLimited(
            f"Rate limit of {worst.limit} requests exceeded; retry in {headers['Retry-After']} s.",
            headers=headers,
        )
    return headers_for(min(results, key=lambda result: result.remaining / result.limit))


def headers_for(result: RateLimitResult) -> dict[str, str]:
    """The ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` headers of one result."""
    return {
        "RateLimit-Limit": str(result.limit),
        "RateLimit-Remaining": str(max(0, result.remaining)),
        "RateLimit-Reset": str(max(0, math.ceil(result.reset_after))),
    }
