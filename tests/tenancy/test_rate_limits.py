"""Rate limits: per API key and per tenant, with RateLimit-* headers, global across server processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import AsyncClient

from tests.helpers import TenantHandle, bearer, signup_at
from tests.server_process import ServerProcess

FREE_TENANT_RPM = 300
#: A key limit no test reaches, so that the tenant's limit is the one closest to exhaustion.
UNLIMITED_KEY = {"rate_limit_rpm": 1_000_000, "rate_limit_rph": 100_000_000}


async def create_key(client: AsyncClient, tenant: TenantHandle, **spec: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/api-keys", json={"name": "limited", "scopes": ["tenant:read"], **spec}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_key_limit_with_headers_then_429(client: AsyncClient, tenant_a: TenantHandle) -> None:
    key = await create_key(client, tenant_a, rate_limit_rpm=3)
    url = f"/v1/tenants/{tenant_a.id}"
    remaining = []
    for _ in range(3):
        response = await client.get(url, headers=bearer(key["key"]))
        assert response.status_code == 200, response.text
        assert response.headers["RateLimit-Limit"] == "3"
        assert int(response.headers["RateLimit-Reset"]) >= 1
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]

    refused = await client.get(url, headers=bearer(key["key"]))
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "RATE_LIMITED"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1

    # The limit is the key's: the tenant's other keys are unaffected.
    other = await create_key(client, tenant_a)
    assert (await client.get(url, headers=bearer(other["key"]))).status_code == 200
    assert (await client.get(url, headers=tenant_a.headers)).status_code == 200
    assert (await client.get(url, headers=bearer(key["key"]))).status_code == 429


async def test_key_limits_do_not_cross_tenants(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    key = await create_key(client, tenant_a, rate_limit_rpm=1)
    assert (await client.get(f"/v1/tenants/{tenant_a.id}", headers=bearer(key["key"]))).status_code == 200
    assert (await client.get(f"/v1/tenants/{tenant_a.id}", headers=bearer(key["key"]))).status_code == 429
    assert (await client.get(f"/v1/tenants/{tenant_b.id}", headers=tenant_b.headers)).status_code == 200


async def test_platform_admin_is_not_rate_limited(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    response = await client.get("/v1/tenants", headers=admin_headers)
    assert response.status_code == 200
    assert "RateLimit-Limit" not in response.headers


async def test_every_key_of_a_tenant_counts_against_the_tenant_limit(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    keys = [await create_key(client, tenant_a, **UNLIMITED_KEY) for _ in range(2)]
    url = f"/v1/tenants/{tenant_a.id}"
    allowed = 0
    refused = None
    # Alternate between the two keys until the tenant-wide limit (300/min on the free plan) refuses one.
    for n in range(2 * FREE_TENANT_RPM + 50):
        response = await client.get(url, headers=bearer(keys[n % 2]["key"]))
        if response.status_code == 429:
            refused = response
            break
        assert response.status_code == 200, response.text
        # With limitless keys, the headers report the tenant's budget, shared by both keys.
        assert response.headers["RateLimit-Limit"] == str(FREE_TENANT_RPM)
        allowed += 1
    assert refused is not None, "the tenant limit never applied"
    assert refused.json()["code"] == "RATE_LIMITED"
    assert refused.headers["RateLimit-Limit"] == str(FREE_TENANT_RPM)
    assert int(refused.headers["Retry-After"]) >= 1
    # The owner key spent 2 of the 300 creating the keys; were the budget per key, both keys together would
    # have got about twice as far before the first refusal.
    assert FREE_TENANT_RPM - 2 <= allowed < 2 * FREE_TENANT_RPM - 10
    # Other tenants have their own budget.
    assert (await client.get(f"/v1/tenants/{tenant_b.id}", headers=tenant_b.headers)).status_code == 200


@pytest.mark.slow
def test_limits_and_revocation_are_global_across_processes(
    tmp_path: Path, replica_env: dict[str, str]
) -> None:
    env = replica_env
    with ServerProcess(tmp_path / "one", env) as one, ServerProcess(tmp_path / "two", env) as two:
        signed_up = signup_at(one.base_url, "Global")
        tenant_id, owner = signed_up.id, signed_up.headers

        def new_key(**spec: Any) -> dict[str, Any]:
            response = httpx.post(
                one.base_url + "/v1/api-keys",
                json={"name": "k", "scopes": ["tenant:read"], **spec},
                headers=owner,
            )
            assert response.status_code == 201, response.text
            body: dict[str, Any] = response.json()
            return body

        limited = new_key(rate_limit_rpm=4)
        statuses = []
        for n in range(8):
            server = (one, two)[n % 2]
            response = httpx.get(f"{server.base_url}/v1/tenants/{tenant_id}", headers=bearer(limited["key"]))
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.json()["code"] == "RATE_LIMITED"
                assert int(response.headers["Retry-After"]) >= 1
        assert statuses == [200] * 4 + [429] * 4, (one.output(), two.output())

        doomed = new_key()
        doomed_headers = bearer(doomed["key"])
        assert httpx.get(f"{two.base_url}/v1/tenants/{tenant_id}", headers=doomed_headers).status_code == 200
        revoked = httpx.delete(f"{one.base_url}/v1/api-keys/{doomed['id']}", headers=owner)
        assert revoked.status_code == 204
        after = httpx.get(f"{two.base_url}/v1/tenants/{tenant_id}", headers=doomed_headers)
        assert after.status_code == 401
        assert after.json()["code"] == "API_KEY_REVOKED"
        assert after.headers["WWW-Authenticate"].startswith("Bearer")
        # The owner key, on the other process, is unaffected.
        assert httpx.get(f"{two.base_url}/v1/tenants/{tenant_id}", headers=owner).status_code == 200
