"""Signup and the tenant resource."""

from __future__ import annotations

from pathlib import Path

from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from aigos.server.app import create_app
from tests.conftest import ADMIN_TOKEN, embedded_settings
from tests.helpers import TenantHandle, signup


async def test_signup_returns_tenant_owner_and_a_working_key(client: AsyncClient) -> None:
    tenant = await signup(client, "Acme", slug="acme")
    body = tenant.body
    assert body["tenant"]["slug"] == "acme"
    assert body["tenant"]["plan_tier"] == "free"
    assert body["tenant"]["status"] == "active"
    assert body["owner"]["role"] == "owner"
    assert body["api_key"]["key"].startswith("aigos_sk_live_")
    assert body["api_key"]["scopes"] == ["admin"]
    assert body["api_key"]["key_prefix"] == body["api_key"]["key"][: len(body["api_key"]["key_prefix"])]
    me = await client.get(f"/v1/tenants/{tenant.id}", headers=tenant.headers)
    assert me.status_code == 200
    assert me.json()["name"] == "Acme"


async def test_the_key_is_shown_once(client: AsyncClient, tenant_a: TenantHandle) -> None:
    listed = await client.get("/v1/api-keys", headers=tenant_a.headers)
    assert tenant_a.key not in listed.text
    assert "key_hash" not in listed.text


async def test_duplicate_slug_is_409(client: AsyncClient) -> None:
    await signup(client, "One", slug="taken")
    response = await client.post(
        "/v1/tenants",
        json={"name": "Two", "slug": "taken", "owner_email": "x@example.com", "owner_password": "p" * 12},
    )
    assert response.status_code == 409
    assert response.json()["code"] == "SLUG_TAKEN"


async def test_one_person_may_own_two_tenants_with_their_password(client: AsyncClient) -> None:
    first = await signup(client, "First", owner_email="Same@Example.com")
    second = await signup(client, "Second", owner_email="same@example.com")
    assert first.owner_id == second.owner_id
    wrong = await client.post(
        "/v1/tenants",
        json={
            "name": "Third",
            "slug": "third",
            "owner_email": "same@example.com",
            "owner_password": "w" * 12,
        },
    )
    assert wrong.status_code == 409
    assert wrong.json()["code"] == "EMAIL_TAKEN"


async def test_signup_validation_points_at_fields(client: AsyncClient) -> None:
    response = await client.post(
        "/v1/tenants",
        json={"name": "", "slug": "Bad Slug!", "owner_email": "nope", "owner_password": "short"},
    )
    body = response.json()
    assert response.status_code == 400
    assert body["code"] == "VALIDATION_FAILED"
    assert {error["pointer"] for error in body["errors"]} == {
        "/name",
        "/slug",
        "/owner_email",
        "/owner_password",
    }


async def test_only_the_platform_admin_picks_a_paid_plan(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    refused = await client.post(
        "/v1/tenants",
        json={
            "name": "P",
            "slug": "paid",
            "owner_email": "p@example.com",
            "owner_password": "p" * 12,
            "plan_tier": "pro",
        },
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "PLATFORM_ONLY"
    tenant = await signup(client, "Paid", plan_tier="pro", headers=admin_headers)
    assert tenant.body["tenant"]["plan_tier"] == "pro"


async def test_update_tenant(
    client: AsyncClient, tenant_a: TenantHandle, admin_headers: dict[str, str]
) -> None:
    changed = await client.put(
        f"/v1/tenants/{tenant_a.id}",
        json={"name": "Alpha Inc", "settings": {"aggregate": True}},
        headers=tenant_a.headers,
    )
    assert changed.status_code == 200
    assert changed.json()["name"] == "Alpha Inc"
    assert changed.json()["settings"] == {"aggregate": True}
    assert changed.json()["updated_at"] >= changed.json()["created_at"]
    own_plan = await client.put(
        f"/v1/tenants/{tenant_a.id}", json={"plan_tier": "enterprise"}, headers=tenant_a.headers
    )
    assert own_plan.status_code == 403
    suspended = await client.put(
        f"/v1/tenants/{tenant_a.id}", json={"status": "suspended"}, headers=admin_headers
    )
    assert suspended.json()["status"] == "suspended"
    locked_out = await client.get(f"/v1/tenants/{tenant_a.id}", headers=tenant_a.headers)
    assert locked_out.status_code == 403
    assert locked_out.json()["code"] == "TENANT_SUSPENDED"


async def test_unknown_tenant_is_404_for_the_platform_admin(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get("/v1/tenants/00000000-0000-0000-0000-000000000000", headers=admin_headers)
    assert response.status_code == 404
    assert response.json()["code"] == "TENANT_NOT_FOUND"


async def test_closed_signup_admits_only_the_platform_admin(tmp_path: Path) -> None:
    app = create_app(embedded_settings(tmp_path, signup_enabled=False))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as client,
    ):
        body = {"name": "C", "slug": "closed", "owner_email": "c@example.com", "owner_password": "c" * 12}
        refused = await client.post("/v1/tenants", json=body)
        assert refused.status_code == 403
        assert refused.json()["code"] == "SIGNUP_CLOSED"
        created = await client.post(
            "/v1/tenants", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert created.status_code == 201


async def test_bad_credentials(client: AsyncClient, tenant_a: TenantHandle) -> None:
    path = f"/v1/tenants/{tenant_a.id}"
    cases = {
        None: "UNAUTHENTICATED",
        "Bearer ": "UNAUTHENTICATED",
        "Basic dXNlcjpwYXNz": "UNAUTHENTICATED",
        "Bearer not-ours": "INVALID_CREDENTIALS",
        "Bearer aigos_sk_live_doesnotexist": "INVALID_API_KEY",
        "Bearer aigos_pat_doesnotexist": "INVALID_CREDENTIALS",
    }
    for header, code in cases.items():
        headers = {"Authorization": header} if header else {}
        response = await client.get(path, headers=headers)
        assert response.status_code == 401, header
        assert response.json()["code"] == code, header
        assert response.headers["www-authenticate"].startswith("Bearer")
