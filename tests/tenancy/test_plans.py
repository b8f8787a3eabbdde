"""Plans: the free plan's API-key limit, freeing a slot by revoking, upgrades by the platform admin only."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient, Response

from tests.helpers import TenantHandle


async def new_key(client: AsyncClient, tenant: TenantHandle, name: str) -> Response:
    return await client.post(
        "/v1/api-keys", json={"name": name, "scopes": ["tenant:read"]}, headers=tenant.headers
    )


async def fill_free_plan(client: AsyncClient, tenant: TenantHandle) -> list[dict[str, Any]]:
    """Create keys until the free plan's five live keys exist (the owner key is the first)."""
    keys = []
    for n in range(4):
        response = await new_key(client, tenant, f"k{n}")
        assert response.status_code == 201, response.text
        keys.append(response.json())
    return keys


async def test_free_plan_allows_five_live_keys(client: AsyncClient, tenant_a: TenantHandle) -> None:
    await fill_free_plan(client, tenant_a)
    sixth = await new_key(client, tenant_a, "one too many")
    assert sixth.status_code == 403
    assert sixth.headers["content-type"].startswith("application/problem+json")
    body = sixth.json()
    assert body["code"] == "PLAN_LIMIT_EXCEEDED"
    assert body["plan"] == "free"
    assert body["resource"] == "api_keys"
    assert body["limit"] == 5
    listed = await client.get("/v1/api-keys", headers=tenant_a.headers)
    assert listed.json()["total"] == 5


async def test_revoking_a_key_frees_a_slot(client: AsyncClient, tenant_a: TenantHandle) -> None:
    keys = await fill_free_plan(client, tenant_a)
    assert (await new_key(client, tenant_a, "full")).status_code == 403
    revoked = await client.delete(f"/v1/api-keys/{keys[0]['id']}", headers=tenant_a.headers)
    assert revoked.status_code == 204
    assert (await new_key(client, tenant_a, "replacement")).status_code == 201
    assert (await new_key(client, tenant_a, "full again")).status_code == 403


async def test_the_limit_is_per_tenant(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    await fill_free_plan(client, tenant_a)
    assert (await new_key(client, tenant_a, "full")).status_code == 403
    assert (await new_key(client, tenant_b, "fine")).status_code == 201


async def test_platform_admin_upgrade_allows_more_keys(
    client: AsyncClient, tenant_a: TenantHandle, admin_headers: dict[str, str]
) -> None:
    await fill_free_plan(client, tenant_a)
    assert (await new_key(client, tenant_a, "full")).status_code == 403
    upgraded = await client.put(
        f"/v1/tenants/{tenant_a.id}", json={"plan_tier": "pro"}, headers=admin_headers
    )
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["plan_tier"] == "pro"
    for n in range(3):
        assert (await new_key(client, tenant_a, f"pro{n}")).status_code == 201
    usage = await client.get("/v1/usage", headers=tenant_a.headers)
    assert usage.json()["plan_tier"] == "pro"
    assert usage.json()["limits"]["max_api_keys"] == 50


async def test_a_tenant_cannot_change_its_own_plan(client: AsyncClient, tenant_a: TenantHandle) -> None:
    for change in ({"plan_tier": "pro"}, {"plan_tier": "enterprise", "name": "Sneaky"}, {"status": "active"}):
        refused = await client.put(f"/v1/tenants/{tenant_a.id}", json=change, headers=tenant_a.headers)
        assert refused.status_code == 403
        assert refused.json()["code"] == "PLATFORM_ONLY"
    tenant = await client.get(f"/v1/tenants/{tenant_a.id}", headers=tenant_a.headers)
    assert tenant.json()["plan_tier"] == "free"
    assert tenant.json()["name"] == "Alpha"
    assert (
        await client.put(f"/v1/tenants/{tenant_a.id}", json={"name": "A2"}, headers=tenant_a.headers)
    ).status_code == 200


async def test_signup_cannot_pick_a_paid_plan(client: AsyncClient) -> None:
    response = await client.post(
        "/v1/tenants",
        json={
            "name": "Greedy",
            "slug": "greedy",
            "owner_email": "owner@greedy.example.com",
            "owner_password": "correct horse battery",
            "plan_tier": "enterprise",
        },
    )
    assert response.status_code == 403
    assert response.json()["code"] == "PLATFORM_ONLY"
