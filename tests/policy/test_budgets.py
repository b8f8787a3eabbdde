"""Budgets through the check API: periods, sharing, concurrency, and spend that survives restarts."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from aigos.server.app import create_app
from aigos.server.config import Settings
from tests.conftest import REDIS_URL
from tests.helpers import TenantHandle, signup
from tests.identity.helpers import pointers, register
from tests.policy.helpers import CAPS, check, create_policy


async def test_concurrent_checks_never_overspend(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agent = await register(client, tenant_a, capabilities={**CAPS, "max_budget": 100.0})
    await create_policy(client, tenant_a, budget={"limit": 10, "period": "daily"})
    # As many at once as a worker admits (AIGOS_MAX_REQUESTS_IN_FLIGHT, 16): more would measure the
    # admission's wait on a busy machine, not the budget.
    decisions = await asyncio.gather(
        *(check(client, agent["identity_token"], "spend", "x", estimated_cost=1) for _ in range(16))
    )
    assert sum(d["allowed"] for d in decisions) == 10
    assert {d["code"] for d in decisions if not d["allowed"]} == {"BUDGET_EXCEEDED"}
    assert min(d["budget_remaining"] for d in decisions) == 0


async def test_capability_budget_and_shared_policy_budget(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    one = await register(client, tenant_a, capabilities={**CAPS, "max_budget": 3.0})
    two = await register(client, tenant_a, capabilities={**CAPS, "max_budget": 50.0})
    await create_policy(
        client, tenant_a, name="team", budget={"limit": 5, "period": "monthly", "scope": "shared"}
    )
    assert (await check(client, one["identity_token"], estimated_cost=3))["allowed"] is True
    # The agent's own ceiling (3) is spent; the team budget still has 2.
    capped = await check(client, one["identity_token"], estimated_cost=0.5)
    assert capped["code"] == "BUDGET_EXCEEDED"
    assert "capability budget" in capped["reason"]
    assert (await check(client, two["identity_token"], estimated_cost=2))["allowed"] is True
    shared = await check(client, two["identity_token"], estimated_cost=0.01)
    assert shared["code"] == "BUDGET_EXCEEDED"
    assert "'team'" in shared["reason"]
    # A check without a cost is never refused for the budget, and says what is left.
    free = await check(client, two["identity_token"])
    assert free["allowed"] is True
    assert free["budget_remaining"] == 0


async def test_a_later_denial_spends_nothing(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agent = await register(client, tenant_a, capabilities={**CAPS, "max_budget": 5.0})
    await create_policy(client, tenant_a, rules=[{"effect": "deny", "actions": ["delete"]}])
    denied = await check(client, agent["identity_token"], "delete", "x", estimated_cost=4)
    assert denied["code"] == "CUSTOM_DENIED"
    assert (await check(client, agent["identity_token"], "read", "x", estimated_cost=5))["allowed"] is True


async def test_spend_survives_a_restart_and_a_lost_ledger(settings: Settings, backend: str) -> None:
    async def session() -> tuple[LifespanManager, AsyncClient]:
        manager = LifespanManager(create_app(settings))
        await manager.__aenter__()
        return manager, AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver")

    manager, client = await session()
    tenant = await signup(client, "Spender")
    agent: dict[str, Any] = await register(client, tenant, capabilities={**CAPS, "max_budget": 10.0})
    assert (await check(client, agent["identity_token"], estimated_cost=7))["allowed"] is True
    await client.aclose()
    await manager.__aexit__(None, None, None)  # shutdown writes the spend to the database

    if backend == "postgres":
        # As after a Redis restart: the ledger forgot everything; the database did not.
        redis = aioredis.from_url(REDIS_URL)
        keys = [key async for key in redis.scan_iter(match=settings.redis_prefix + "b:*")]
        assert keys
        await redis.delete(*keys)
        await redis.aclose()

    manager, client = await session()
    try:
        after = await check(client, agent["identity_token"], estimated_cost=3.5)
        assert after["code"] == "BUDGET_EXCEEDED"
        assert after["budget_remaining"] == 3.0
        assert (await check(client, agent["identity_token"], estimated_cost=3))["allowed"] is True
    finally:
        await client.aclose()
        await manager.__aexit__(None, None, None)


async def test_rate_limits_refuse_past_the_limit_and_dry_runs_only_report(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    agent = await register(client, tenant_a, capabilities=CAPS)
    other = await register(client, tenant_a, capabilities=CAPS)
    await create_policy(client, tenant_a, name="slow down", rate_limit={"requests": 3, "per_seconds": 3600})
    await create_policy(
        client, tenant_a, name="watch", mode="dry_run", rate_limit={"requests": 1, "per_seconds": 3600}
    )
    decisions = [await check(client, agent["identity_token"]) for _ in range(4)]
    assert [d["allowed"] for d in decisions] == [True, True, True, False]
    assert decisions[1]["would_deny"][0]["code"] == "RATE_LIMITED"
    assert decisions[3]["code"] == "RATE_LIMITED"
    assert decisions[3]["stage"] == "budget"
    assert "3 checks per 3600 s" in decisions[3]["reason"]
    # Per agent by default: another agent has its own allowance.
    assert (await check(client, other["identity_token"]))["allowed"] is True
    # A request refused by a later stage is not counted, but still reported as rate limited.
    await create_policy(client, tenant_a, name="no rm", rules=[{"effect": "deny", "actions": ["rm"]}])
    assert (await check(client, agent["identity_token"], "rm"))["code"] == "RATE_LIMITED"


async def test_bad_rate_limits_point_at_the_field(client: AsyncClient, tenant_a: TenantHandle) -> None:
    for spec, pointer in (
        ({"requests": 0, "per_seconds": 1}, "/rate_limit/requests"),
        ({"requests": 1, "per_seconds": 0}, "/rate_limit/per_seconds"),
        ({"requests": 1, "per_seconds": 1, "scope": "everyone"}, "/rate_limit/scope"),
    ):
        response = await client.post(
            "/v1/policies", json={"name": "bad", "rate_limit": spec}, headers=tenant_a.headers
        )
        assert pointer in pointers(response)
