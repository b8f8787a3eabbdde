"""Tenant isolation through the API: tenant A's key on tenant B's ids answers 404, and B is unchanged.

Every tenant-owned endpoint with an id in its path is listed in ``CROSS_TENANT_CALLS``; a test checks the
list covers every such route of the app, so a new endpoint cannot be added without joining this suite.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.aigrc.cards import uploaded
from tests.helpers import TenantHandle

# (method, path template, JSON body). {tenant} is B's tenant id, {key} B's key id, {user} B's owner id,
# {agent} B's agent id, {credential} that agent's client secret id, {policy} B's policy id and {card} the id
# of B's asset card.
CROSS_TENANT_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/tenants/{tenant}", None),
    ("PUT", "/v1/tenants/{tenant}", {"name": "pwned"}),
    ("GET", "/v1/api-keys/{key}", None),
    ("DELETE", "/v1/api-keys/{key}", None),
    ("POST", "/v1/api-keys/{key}/rotate", {"grace_seconds": 0}),
    ("GET", "/v1/members/{user}", None),
    ("PATCH", "/v1/members/{user}", {"role": "viewer"}),
    ("DELETE", "/v1/members/{user}", None),
    # B's event ids are not known here; tests/audit/test_api.py repeats these with B's real event ids.
    ("GET", "/v1/audit/events/{key}", None),
    ("GET", "/v1/audit/events/{key}/proof", None),
    ("GET", "/v1/agents/{agent}", None),
    ("PATCH", "/v1/agents/{agent}", {"name": "pwned"}),
    ("DELETE", "/v1/agents/{agent}", None),
    ("POST", "/v1/agents/{agent}/suspend", {"reason": "pwned"}),
    ("POST", "/v1/agents/{agent}/reactivate", None),
    ("GET", "/v1/agents/{agent}/credentials", None),
    ("POST", "/v1/agents/{agent}/credentials", {"name": "pwned"}),
    ("POST", "/v1/agents/{agent}/credentials/{credential}/rotate", {"grace_seconds": 0}),
    ("DELETE", "/v1/agents/{agent}/credentials/{credential}", None),
    # B's agent ids are not known here; tests/identity/test_agntcy.py repeats it with B's real agent id.
    ("GET", "/v1/agents/{key}/oasf", None),
    # B's command ids are not known here; tests/killswitch/test_api.py repeats it with B's real command id.
    ("GET", "/v1/kill-switch/commands/{key}", None),
    # Likewise for fleet commands: tests/killswitch/test_fleet.py repeats it with B's real fleet command id.
    ("GET", "/v1/kill-switch/fleet-commands/{key}", None),
    ("GET", "/v1/policies/{policy}", None),
    ("PUT", "/v1/policies/{policy}", {"name": "pwned"}),
    ("DELETE", "/v1/policies/{policy}", None),
    ("GET", "/v1/policies/{policy}/versions", None),
    ("GET", "/v1/policies/{policy}/versions/{version}", None),
    ("GET", "/v1/aigrc/asset-cards/{card}", None),
    ("GET", "/v1/aigrc/asset-cards/{card}/versions", None),
    ("GET", "/v1/aigrc/asset-cards/{card}/export", None),
    ("GET", "/v1/aigrc/compliance/{card}", None),
]
# Routes with an id that are not tenant-owned resources.
NOT_TENANT_OWNED: set[tuple[str, str]] = {
    # The agent plane: authenticated by the agent's own token, not a tenant key (a tenant key gets 401).
    # Another tenant's agent id answers 404 there too: tests/identity/test_agent_auth.py.
    ("POST", "/v1/agents/{}/heartbeat"),
    # The agent acknowledges its own command; another agent's command answers 404 (tests/killswitch).
    ("POST", "/v1/kill-switch/commands/{}/ack"),
    # Platform admin only; a tenant key gets 403 PLATFORM_ONLY (tests/tenancy/test_access.py).
    ("POST", "/v1/platform/tenants/{}/recovery-key"),
}


async def snapshot(client: AsyncClient, tenant: TenantHandle) -> dict[str, Any]:
    """Everything B can see of itself."""
    state: dict[str, Any] = {}
    for path in (
        f"/v1/tenants/{tenant.id}",
        "/v1/api-keys?include_revoked=true&limit=100",
        "/v1/members?limit=100",
        "/v1/agents?limit=100",
        "/v1/policies?limit=100",
    ):
        response = await client.get(path, headers=tenant.headers)
        assert response.status_code == 200, (path, response.text)
        state[path] = _without_volatile(response.json())
    for agent in state["/v1/agents?limit=100"]["agents"]:
        path = f"/v1/agents/{agent['id']}/credentials"
        response = await client.get(path, headers=tenant.headers)
        assert response.status_code == 200, (path, response.text)
        state[path] = _without_volatile(response.json())
    return state


async def ids_of(client: AsyncClient, tenant: TenantHandle) -> dict[str, str]:
    """The ids the templates name, of ``tenant``; registers an agent (with a client secret) for it."""
    registered = await client.post("/v1/agents/register", json={"name": "Beta agent"}, headers=tenant.headers)
    assert registered.status_code == 201, registered.text
    agent_id = registered.json()["agent_id"]
    credentials = await client.get(f"/v1/agents/{agent_id}/credentials", headers=tenant.headers)
    policy = await client.post("/v1/policies", json={"name": "Beta policy"}, headers=tenant.headers)
    assert policy.status_code == 201, policy.text
    card = await uploaded(client, tenant, "aigrc-2025-0b0b0b0b")
    return {
        "policy": policy.json()["id"],
        "version": "1",
        "tenant": tenant.id,
        "key": tenant.key_id,
        "user": tenant.owner_id,
        "agent": agent_id,
        "credential": credentials.json()[0]["id"],
        "card": card["id"],
    }


def _without_volatile(body: Any) -> Any:
    if isinstance(body, dict):
        return {key: _without_volatile(value) for key, value in body.items() if key != "last_used_at"}
    if isinstance(body, list):
        return [_without_volatile(item) for item in body]
    return body


async def test_cross_tenant_ids_answer_404_and_change_nothing(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    ids = await ids_of(client, tenant_b)
    before = await snapshot(client, tenant_b)
    for method, template, body in CROSS_TENANT_CALLS:
        path = template.format(**ids)
        response = await client.request(method, path, json=body, headers=tenant_a.headers)
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        # The id the caller sent may be echoed; nothing else of B's may appear.
        for secret in (tenant_b.slug, tenant_b.owner_email, "Beta"):
            assert secret not in response.text
    assert await snapshot(client, tenant_b) == before


async def test_lists_never_show_another_tenant(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    for path in ("/v1/api-keys?include_revoked=true&limit=100", "/v1/members?limit=100", "/v1/usage"):
        response = await client.get(path, headers=tenant_a.headers)
        assert response.status_code == 200, (path, response.text)
        text = response.text
        assert tenant_b.id not in text
        assert tenant_b.key_id not in text
        assert tenant_b.owner_email not in text


async def test_the_platform_list_is_refused_to_tenant_keys(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    response = await client.get("/v1/tenants", headers=tenant_a.headers)
    assert response.status_code == 403
    assert response.json()["code"] == "PLATFORM_ONLY"


async def test_platform_admin_sees_every_tenant(
    client: AsyncClient, admin_headers: dict[str, str], tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    listed = (await client.get("/v1/tenants", headers=admin_headers)).json()
    assert {tenant["id"] for tenant in listed["data"]} == {tenant_a.id, tenant_b.id}
    assert listed["total"] == 2
    one = await client.get(f"/v1/tenants/{tenant_b.id}", headers=admin_headers)
    assert one.json()["slug"] == tenant_b.slug


def test_every_route_with_an_id_is_in_the_suite(app: FastAPI) -> None:
    # Read from the OpenAPI document: it lists every route, including those of included routers.
    covered = {(method, re.sub(r"\{\w+\}", "{}", path)) for method, path, _ in CROSS_TENANT_CALLS}
    seen = 0
    for path, operations in app.openapi()["paths"].items():
        if "{" not in path:
            continue
        for method in operations:
            seen += 1
            key = (method.upper(), re.sub(r"\{\w+\}", "{}", path))
            assert key in covered or key in NOT_TENANT_OWNED, f"{key} is not in the isolation suite"
    assert seen >= len(CROSS_TENANT_CALLS)
