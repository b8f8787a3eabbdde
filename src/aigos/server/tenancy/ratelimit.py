"""Request rate limits per API key and per tenant, global across replicas (the bus's GCRA limiter).

While the bus is down the limits are counted per process instead, each divided by the number of server
processes (``FallbackRateLimiter``): requests keep being admitted rather than refused with the bus.
"""

from __future__ import annotations

import math

from aigos.server.bus import Hit, RateLimiter, RateLimitResult
from aigos.server.config import Settings
from aigos.server.errors import RateLimited
from aigos.server.principal import Principal
from aigos.server.tenancy.plans import plan_of

MINUTE = 60.0
HOUR = 3600.0


async def enforce(limiter: RateLimiter, settings: Settings, principal: Principal) -> dict[str, str]:
    """Count one request against the key's and the tenant's limits.

    Returns the ``RateLimit-*`` headers of the limit closest to exhaustion, or raises ``RATE_LIMITED``
    (429 with ``Retry-After``) when any limit is spent. The platform admin is not limited.
    """
    if principal.tenant_id is None or principal.api_key_id is None:
        return {}
    plan = plan_of(principal.plan_tier)
    key, tenant = f"rl:key:{principal.api_key_id}", f"rl:tenant:{principal.tenant_id}"
    # Narrowest first, stopping at the first refusal: a key hammering past its own limit must not spend
    # its hourly allowance, nor the tenant's budget that the tenant's other keys share.
    results = await limiter.hit_in_order(
        [
            Hit(key + ":m", principal.rate_limit_rpm or settings.default_rate_limit_rpm, MINUTE),
            Hit(key + ":h", principal.rate_limit_rph or settings.default_rate_limit_rph, HOUR),
            Hit(tenant + ":m", plan.tenant_rpm, MINUTE),
            Hit(tenant + ":h", plan.tenant_rph, HOUR),
        ]
    )
    refused = results[-1]
    if not refused.allowed:
        headers = headers_for(refused)
        headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after)))
        raise RateLimited(
            f"Rate limit of {refused.limit} requests exceeded; retry in {headers['Retry-After']} s.",
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
