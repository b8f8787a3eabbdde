"""API keys: scopes, expiry, revocation, rotation with grace, listing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.helpers import TenantHandle, bearer


async def create_key(client: AsyncClient, tenant: TenantHandle, **spec: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/api-keys", json={"name": "k", "scopes": ["tenant:read"], **spec}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_key_format_and_storage(client: AsyncClient, tenant_a: TenantHandle) -> None:
    key = await create_key(client, tenant_a, environment="test")
    assert key["key"].startswith("aigos_sk_test_")
    assert len(key["key"]) >= len("aigos_sk_test_") + 43  # 256 bits, url-safe base64
    assert key["status"] == "active"
    assert key["created_by"] == f"api_key:{tenant_a.key_id}"
    fetched = await client.get(f"/v1/api-keys/{key['id']}", headers=tenant_a.headers)
    assert "key" not in fetched.json()
    assert fetched.json()["key_prefix"] == key["key_prefix"]


async def test_scopes_are_enforced(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reader = await create_key(client, tenant_a, scopes=["tenant:read"])
    ok = await client.get(f"/v1/tenants/{tenant_a.id}", headers=bearer(reader["key"]))
    assert ok.status_code == 200
    refused = await client.put(
        f"/v1/tenants/{tenant_a.id}", json={"name": "x"}, headers=bearer(reader["key"])
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "INSUFFICIENT_SCOPE"
    assert refused.json()["scope"] == "tenant:write"
    keys = await client.get("/v1/api-keys", headers=bearer(reader["key"]))
    assert keys.status_code == 403


async def test_a_key_cannot_mint_more_power_than_it_has(client: AsyncClient, tenant_a: TenantHandle) -> None:
    writer = await create_key(client, tenant_a, scopes=["api_keys:write", "agents:read"])
    ok = await client.post(
        "/v1/api-keys", json={"name": "sub", "scopes": ["agents:read"]}, headers=bearer(writer["key"])
    )
    assert ok.status_code == 201
    escalation = await client.post(
        "/v1/api-keys", json={"name": "sub", "scopes": ["admin"]}, headers=bearer(writer["key"])
    )
    assert escalation.status_code == 403
    assert escalation.json()["code"] == "SCOPE_ESCALATION"


async def test_unknown_scope_and_naive_expiry_are_validation_errors(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    unknown = await client.post(
        "/v1/api-keys", json={"name": "k", "scopes": ["root"]}, headers=tenant_a.headers
    )
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["pointer"] == "/scopes"
    naive = await client.post(
        "/v1/api-keys",
        json={"name": "k", "scopes": ["tenant:read"], "expires_at": "2030-01-01T00:00:00"},
        headers=tenant_a.headers,
    )
    assert naive.status_code == 400
    past = await client.post(
        "/v1/api-keys",
        json={"name": "k", "scopes": ["tenant:read"], "expires_at": "2020-01-01T00:00:00Z"},
        headers=tenant_a.headers,
    )
    assert past.status_code == 400
    assert past.json()["errors"] == [
        {"pointer": "/expires_at", "detail": "Value error, must be in the future"}
    ]


async def test_expired_key_is_refused(client: AsyncClient, tenant_a: TenantHandle) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    key = await create_key(client, tenant_a, expires_at=soon)
    await asyncio.sleep(1.2)
    response = await client.get(f"/v1/tenants/{tenant_a.id}", headers=bearer(key["key"]))
    assert response.status_code == 401
    assert response.json()["code"] == "API_KEY_EXPIRED"


async def test_revoked_key_stops_at_once_and_stays_listed(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    key = await create_key(client, tenant_a)
    assert (await client.get(f"/v1/tenants/{tenant_a.id}", headers=bearer(key["key"]))).status_code == 200
    revoked = await client.delete(f"/v1/api-keys/{key['id']}", headers=tenant_a.headers)
    assert revoked.status_code == 204
    again = await client.delete(f"/v1/api-keys/{key['id']}", headers=tenant_a.headers)
    assert again.status_code == 204
    refused = await client.get(f"/v1/tenants/{tenant_a.id}", headers=bearer(key["key"]))
    assert refused.status_code == 401
    assert refused.json()["code"] == "API_KEY_REVOKED"
    active = (await client.get("/v1/api-keys", headers=tenant_a.headers)).json()
    assert key["id"] not in {k["id"] for k in active["data"]}
    everything = (await client.get("/v1/api-keys?include_revoked=true", headers=tenant_a.headers)).json()
    assert {k["id"]: k["status"] for k in everything["data"]}[key["id"]] == "revoked"


async def test_rotation_keeps_the_old_key_for_the_grace_period(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    old = await create_key(client, tenant_a, scopes=["tenant:read"], rate_limit_rpm=500)
    rotated = await client.post(
        f"/v1/api-keys/{old['id']}/rotate", json={"grace_seconds": 1}, headers=tenant_a.headers
    )
    assert rotated.status_code == 201
    new = rotated.json()
    assert new["rotated_from"] == old["id"]
    assert new["scopes"] == ["tenant:read"]
    assert new["rate_limit_rpm"] == 500
    assert new["key"] != old["key"]
    path = f"/v1/tenants/{tenant_a.id}"
    assert (await client.get(path, headers=bearer(old["key"]))).status_code == 200
    assert (await client.get(path, headers=bearer(new["key"]))).status_code == 200
    status = (await client.get(f"/v1/api-keys/{old['id']}", headers=tenant_a.headers)).json()["status"]
    assert status == "grace"
    twice = await client.post(f"/v1/api-keys/{old['id']}/rotate", headers=tenant_a.headers)
    assert twice.status_code == 409
    assert twice.json()["code"] == "API_KEY_NOT_ACTIVE"
    await asyncio.sleep(1.2)
    expired = await client.get(path, headers=bearer(old["key"]))
    assert expired.status_code == 401
    assert expired.json()["code"] == "API_KEY_EXPIRED"
    assert (await client.get(path, headers=bearer(new["key"]))).status_code == 200


async def test_rotation_without_grace_stops_the_old_key_now(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    old = await create_key(client, tenant_a)
    new = (
        await client.post(
            f"/v1/api-keys/{old['id']}/rotate", json={"grace_seconds": 0}, headers=tenant_a.headers
        )
    ).json()
    assert (await client.get(f"/v1/tenants/{tenant_a.id}", headers=bearer(old["key"]))).status_code == 401
    assert (await client.get(f"/v1/tenants/{tenant_a.id}", headers=bearer(new["key"]))).status_code == 200


async def test_default_grace_comes_from_settings(client: AsyncClient, tenant_a: TenantHandle) -> None:
    old = await create_key(client, tenant_a)
    await client.post(f"/v1/api-keys/{old['id']}/rotate", headers=tenant_a.headers)
    listed = (await client.get(f"/v1/api-keys/{old['id']}", headers=tenant_a.headers)).json()
    until = datetime.fromisoformat(listed["grace_expires_at"])
    assert timedelta(hours=23) < until - datetime.now(UTC) <= timedelta(hours=24)


async def test_last_used_is_tracked_without_a_write_per_request(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle
) -> None:
    key = await create_key(client, tenant_a)
    assert key["last_used_at"] is None
    await client.get(f"/v1/tenants/{tenant_a.id}", headers=bearer(key["key"]))
    pending = (await client.get(f"/v1/api-keys/{key['id']}", headers=tenant_a.headers)).json()
    assert pending["last_used_at"] is not None
    await app.state.runtime.key_activity.flush()
    stored = (await client.get(f"/v1/api-keys/{key['id']}", headers=tenant_a.headers)).json()
    assert stored["last_used_at"] == pending["last_used_at"]


async def test_pagination(client: AsyncClient, tenant_a: TenantHandle) -> None:
    for _ in range(3):
        await create_key(client, tenant_a)
    first = (await client.get("/v1/api-keys?limit=2&page=1", headers=tenant_a.headers)).json()
    second = (await client.get("/v1/api-keys?limit=2&page=2", headers=tenant_a.headers)).json()
    assert first["total"] == second["total"] == 4
    assert len(first["data"]) == 2
    assert len(second["data"]) == 2
    assert not {k["id"] for k in first["data"]} & {k["id"] for k in second["data"]}
    bad = await client.get("/v1/api-keys?limit=1000", headers=tenant_a.headers)
    assert bad.status_code == 400


async def test_platform_token_cannot_act_inside_a_tenant(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get("/v1/api-keys", headers=admin_headers)
    assert response.status_code == 403
    assert response.json()["code"] == "TENANT_REQUIRED"


async def test_scope_catalogue(client: AsyncClient) -> None:
    scopes = (await client.get("/v1/api-keys/scopes")).json()
    assert {"admin", "agents:read", "killswitch:trigger", "audit:read"} <= set(scopes)


async def test_a_narrower_key_cannot_revoke_a_broader_one(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    manager = await create_key(client, tenant_a, scopes=["api_keys:write", "api_keys:read"])
    refused = await client.delete(f"/v1/api-keys/{tenant_a.key_id}", headers=bearer(manager["key"]))
    assert refused.status_code == 403
    assert refused.json()["code"] == "SCOPE_ESCALATION"
    still = await client.get(f"/v1/tenants/{tenant_a.id}", headers=tenant_a.headers)
    assert still.status_code == 200
    peer = await create_key(client, tenant_a, scopes=["api_keys:write"])
    allowed = await client.delete(f"/v1/api-keys/{peer['id']}", headers=bearer(manager["key"]))
    assert allowed.status_code == 204
