"""A request with two Authorization headers is refused at the edge, on every route and both backends."""

from __future__ import annotations

import base64

from httpx import AsyncClient

from tests.helpers import TenantHandle


def both(first: TenantHandle, second: TenantHandle) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {first.key}"), ("Authorization", f"Bearer {second.key}")]


async def test_two_tenants_keys_in_one_request_are_refused(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    created = await client.post("/v1/agents/register", json={"name": "a-only"}, headers=tenant_a.headers)
    assert created.status_code == 201, created.text

    for headers in (both(tenant_a, tenant_b), both(tenant_b, tenant_a)):
        listed = await client.get("/v1/agents", headers=headers)
        assert listed.status_code == 400, listed.text
        assert listed.headers["content-type"].startswith("application/problem+json")
        assert listed.json()["code"] == "DUPLICATE_AUTHORIZATION"
        assert "a-only" not in listed.text
        # Writes too: nothing is created in either tenant.
        write = await client.post("/v1/agents/register", json={"name": "twice"}, headers=headers)
        assert write.status_code == 400
        assert write.json()["code"] == "DUPLICATE_AUTHORIZATION"
    # Even the same credential twice: the rule is one header.
    same = await client.get("/v1/agents", headers=both(tenant_a, tenant_a))
    assert same.json()["code"] == "DUPLICATE_AUTHORIZATION"

    for owner in (tenant_a, tenant_b):
        names = [
            agent["name"]
            for agent in (await client.get("/v1/agents", headers=owner.headers)).json()["agents"]
        ]
        assert "twice" not in names
    # One header still works.
    assert (await client.get("/v1/agents", headers=tenant_a.headers)).status_code == 200


async def test_the_oauth_endpoints_answer_invalid_request(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    created = await client.post("/v1/agents/register", json={"name": "client"}, headers=tenant_a.headers)
    agent = created.json()
    basic = base64.b64encode(f"{agent['client_id']}:{agent['client_secret']}".encode()).decode()
    form = {"grant_type": "client_credentials"}
    headers = [("Authorization", f"Basic {basic}"), ("Authorization", f"Bearer {agent['identity_token']}")]
    refused = await client.post("/oauth2/token", data=form, headers=headers)
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.json()["error"] == "invalid_request"
    assert refused.headers["cache-control"] == "no-store"
    issued = await client.post("/oauth2/token", data=form, headers={"Authorization": f"Basic {basic}"})
    assert issued.status_code == 200, issued.text
