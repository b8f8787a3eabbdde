"""Tenant members through the public API, on both backends."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from httpx import AsyncClient, Response

from tests.helpers import TenantHandle, signup


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _key(client: AsyncClient, tenant: TenantHandle, *scopes: str) -> dict[str, str]:
    """Headers with a new key of ``tenant`` holding only ``scopes``."""
    response = await client.post(
        "/v1/api-keys", json={"name": "limited", "scopes": list(scopes)}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    return _bearer(response.json()["key"])


async def _add(client: AsyncClient, tenant: TenantHandle, email: str, role: str = "member") -> Response:
    return await client.post("/v1/members", json={"email": email, "role": role}, headers=tenant.headers)


async def _members(client: AsyncClient, tenant: TenantHandle) -> list[dict[str, Any]]:
    response = await client.get("/v1/members", headers=tenant.headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _email() -> str:
    return f"m-{uuid.uuid4().hex[:8]}@example.com"


def _problem(response: Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code, response.text


async def test_list_shows_the_owner_from_signup(client: AsyncClient, tenant_a: TenantHandle) -> None:
    response = await client.get("/v1/members", headers=tenant_a.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 1
    assert body["page"] == 1
    assert body["limit"] == 20
    [owner] = body["data"]
    assert owner["user_id"] == tenant_a.owner_id
    assert owner["email"] == tenant_a.owner_email
    assert owner["role"] == "owner"
    assert owner["invited"] is False


async def test_list_pages_in_order_of_addition(client: AsyncClient, tenant_a: TenantHandle) -> None:
    added = await _add(client, tenant_a, _email())
    assert added.status_code == 201, added.text
    first = await client.get("/v1/members", params={"limit": 1}, headers=tenant_a.headers)
    second = await client.get("/v1/members", params={"limit": 1, "page": 2}, headers=tenant_a.headers)
    assert [m["user_id"] for m in first.json()["data"]] == [tenant_a.owner_id]
    assert [m["user_id"] for m in second.json()["data"]] == [added.json()["user_id"]]
    assert first.json()["total"] == second.json()["total"] == 2
    _problem(
        await client.get("/v1/members", params={"limit": 101}, headers=tenant_a.headers),
        400,
        "VALIDATION_FAILED",
    )
    _problem(
        await client.get("/v1/members", params={"page": 0}, headers=tenant_a.headers),
        400,
        "VALIDATION_FAILED",
    )


async def test_adding_a_new_email_invites_it(client: AsyncClient, tenant_a: TenantHandle) -> None:
    email = _email()
    response = await _add(client, tenant_a, "  " + email.upper() + " ", role="viewer")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == email
    assert body["role"] == "viewer"
    assert body["invited"] is True
    assert body.pop("invitation_token").startswith("aigos_inv_")
    assert body.pop("invitation_expires_at")
    assert response.headers["cache-control"] == "no-store"
    fetched = await client.get(f"/v1/members/{body['user_id']}", headers=tenant_a.headers)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == body
    assert len(await _members(client, tenant_a)) == 2


async def test_adding_a_member_of_another_tenant(client: AsyncClient, tenant_a: TenantHandle) -> None:
    tenant_b = await signup(client, "Beta")
    before = await _members(client, tenant_b)
    response = await _add(client, tenant_a, tenant_b.owner_email, role="admin")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user_id"] == tenant_b.owner_id
    assert body["role"] == "admin"
    assert body["invited"] is True  # until they accept, as for anyone
    assert await _members(client, tenant_b) == before
    # Removing them from A leaves their account and their ownership of B alone.
    removed = await client.delete(f"/v1/members/{tenant_b.owner_id}", headers=tenant_a.headers)
    assert removed.status_code == 204, removed.text
    assert await _members(client, tenant_b) == before


async def test_duplicate_member_conflicts(client: AsyncClient, tenant_a: TenantHandle) -> None:
    email = _email()
    first = await _add(client, tenant_a, email)
    assert first.status_code == 201
    # Still pending: inviting again issues a fresh token (the first stops working) with the new role.
    again = await _add(client, tenant_a, email, role="admin")
    assert again.status_code == 201, again.text
    assert again.json()["role"] == "admin"
    stale = await client.post(
        "/v1/invitations/accept", json={"token": first.json()["invitation_token"], "password": "p" * 12}
    )
    _problem(stale, 401, "INVALID_INVITATION")
    _problem(await _add(client, tenant_a, tenant_a.owner_email), 409, "MEMBER_EXISTS")


async def test_change_role(client: AsyncClient, tenant_a: TenantHandle) -> None:
    added = (await _add(client, tenant_a, _email())).json()
    response = await client.patch(
        f"/v1/members/{added['user_id']}", json={"role": "admin"}, headers=tenant_a.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == "admin"
    assert body["updated_at"] >= added["updated_at"]
    assert body["created_at"] == added["created_at"]
    fetched = await client.get(f"/v1/members/{added['user_id']}", headers=tenant_a.headers)
    assert fetched.json()["role"] == "admin"


async def test_last_owner_cannot_be_demoted_or_removed(client: AsyncClient, tenant_a: TenantHandle) -> None:
    owner = f"/v1/members/{tenant_a.owner_id}"
    _problem(await client.patch(owner, json={"role": "admin"}, headers=tenant_a.headers), 409, "LAST_OWNER")
    _problem(await client.delete(owner, headers=tenant_a.headers), 409, "LAST_OWNER")
    [member] = await _members(client, tenant_a)
    assert member["role"] == "owner"


async def test_with_two_owners_one_can_go(client: AsyncClient, tenant_a: TenantHandle) -> None:
    second = (await _add(client, tenant_a, _email(), role="owner")).json()
    assert second["role"] == "owner"
    demoted = await client.patch(
        f"/v1/members/{tenant_a.owner_id}", json={"role": "member"}, headers=tenant_a.headers
    )
    assert demoted.status_code == 200, demoted.text
    promoted = await client.patch(
        f"/v1/members/{tenant_a.owner_id}", json={"role": "owner"}, headers=tenant_a.headers
    )
    assert promoted.status_code == 200, promoted.text
    removed = await client.delete(f"/v1/members/{second['user_id']}", headers=tenant_a.headers)
    assert removed.status_code == 204, removed.text
    _problem(
        await client.get(f"/v1/members/{second['user_id']}", headers=tenant_a.headers),
        404,
        "MEMBER_NOT_FOUND",
    )
    _problem(
        await client.delete(f"/v1/members/{tenant_a.owner_id}", headers=tenant_a.headers), 409, "LAST_OWNER"
    )


async def test_concurrent_demotions_keep_an_owner(client: AsyncClient, tenant_a: TenantHandle) -> None:
    second = (await _add(client, tenant_a, _email(), role="owner")).json()
    responses = await asyncio.gather(
        *(
            client.patch(f"/v1/members/{user_id}", json={"role": "member"}, headers=tenant_a.headers)
            for user_id in (tenant_a.owner_id, second["user_id"])
        )
    )
    assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
    assert [m["role"] for m in await _members(client, tenant_a)].count("owner") == 1


async def test_other_tenants_members_are_not_found(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    invited = (await _add(client, tenant_b, _email())).json()
    before = await _members(client, tenant_b)
    for user_id in (tenant_b.owner_id, invited["user_id"], str(uuid.uuid4())):
        path = f"/v1/members/{user_id}"
        _problem(await client.get(path, headers=tenant_a.headers), 404, "MEMBER_NOT_FOUND")
        _problem(
            await client.patch(path, json={"role": "viewer"}, headers=tenant_a.headers),
            404,
            "MEMBER_NOT_FOUND",
        )
        _problem(await client.delete(path, headers=tenant_a.headers), 404, "MEMBER_NOT_FOUND")
    assert await _members(client, tenant_b) == before
    assert [m["user_id"] for m in await _members(client, tenant_a)] == [tenant_a.owner_id]


async def test_read_only_key_cannot_write(client: AsyncClient, tenant_a: TenantHandle) -> None:
    read_only = await _key(client, tenant_a, "members:read")
    listed = await client.get("/v1/members", headers=read_only)
    assert listed.status_code == 200, listed.text
    _problem(
        await client.post("/v1/members", json={"email": _email()}, headers=read_only),
        403,
        "INSUFFICIENT_SCOPE",
    )
    path = f"/v1/members/{tenant_a.owner_id}"
    _problem(await client.patch(path, json={"role": "owner"}, headers=read_only), 403, "INSUFFICIENT_SCOPE")
    _problem(await client.delete(path, headers=read_only), 403, "INSUFFICIENT_SCOPE")
    assert len(await _members(client, tenant_a)) == 1


async def test_owners_need_the_admin_scope(client: AsyncClient, tenant_a: TenantHandle) -> None:
    writer = await _key(client, tenant_a, "members:write")
    _problem(
        await client.post("/v1/members", json={"email": _email(), "role": "owner"}, headers=writer),
        403,
        "INSUFFICIENT_SCOPE",
    )
    added = await client.post("/v1/members", json={"email": _email(), "role": "admin"}, headers=writer)
    assert added.status_code == 201, added.text
    path = f"/v1/members/{added.json()['user_id']}"
    _problem(await client.patch(path, json={"role": "owner"}, headers=writer), 403, "INSUFFICIENT_SCOPE")
    assert (await client.patch(path, json={"role": "viewer"}, headers=writer)).status_code == 200
    # Unmaking an owner is owner-level too, even when another owner would remain.
    promoted = await client.patch(path, json={"role": "owner"}, headers=tenant_a.headers)
    assert promoted.status_code == 200, promoted.text
    _problem(await client.patch(path, json={"role": "member"}, headers=writer), 403, "INSUFFICIENT_SCOPE")
    _problem(await client.delete(path, headers=writer), 403, "INSUFFICIENT_SCOPE")
    assert (await client.delete(path, headers=tenant_a.headers)).status_code == 204


async def test_free_plan_member_limit(client: AsyncClient, tenant_a: TenantHandle) -> None:
    for _ in range(2):
        response = await _add(client, tenant_a, _email())
        assert response.status_code == 201, response.text
    refused = await _add(client, tenant_a, _email())
    _problem(refused, 403, "PLAN_LIMIT_EXCEEDED")
    assert refused.json()["limit"] == 3
    assert len(await _members(client, tenant_a)) == 3


async def test_invalid_input_is_refused(client: AsyncClient, tenant_a: TenantHandle) -> None:
    _problem(await _add(client, tenant_a, "not-an-email"), 400, "VALIDATION_FAILED")
    _problem(await _add(client, tenant_a, _email(), role="emperor"), 400, "VALIDATION_FAILED")
    path = f"/v1/members/{tenant_a.owner_id}"
    _problem(
        await client.patch(path, json={"role": "emperor"}, headers=tenant_a.headers), 400, "VALIDATION_FAILED"
    )
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(
            method,
            "/v1/members/not-a-uuid",
            json={"role": "viewer"} if method == "PATCH" else None,
            headers=tenant_a.headers,
        )
        _problem(response, 400, "VALIDATION_FAILED")
    assert len(await _members(client, tenant_a)) == 1


async def test_members_need_a_tenant_key(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    _problem(await client.get("/v1/members"), 401, "UNAUTHENTICATED")
    _problem(await client.get("/v1/members", headers=admin_headers), 403, "TENANT_REQUIRED")


async def test_concurrent_additions_respect_the_plan_limit(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    responses = await asyncio.gather(*(_add(client, tenant_a, _email()) for _ in range(4)))
    assert sorted(r.status_code for r in responses) == [201, 201, 403, 403], [r.text for r in responses]
    assert len(await _members(client, tenant_a)) == 3


async def test_concurrent_invitations_of_one_new_email(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    email = _email()
    responses = await asyncio.gather(_add(client, tenant_a, email), _add(client, tenant_b, email))
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    assert responses[0].json()["user_id"] == responses[1].json()["user_id"]
