"""People's access: invitations only their holder can accept, signup that takes over nobody, owner sign-in,
the platform admin's recovery key, and throttled guessing. On both backends."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from httpx import AsyncClient, Response

from aigos.server.config import Settings
from tests.conftest import ADMIN_TOKEN
from tests.helpers import TenantHandle, signup

PASSWORD = "correct horse battery"
SIGNUPS_PER_ADDRESS = 6


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with a signup allowance small enough to reach in a test."""
    return settings.model_copy(update={"signups_per_address": SIGNUPS_PER_ADDRESS})


def _problem(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def _email() -> str:
    return f"p-{uuid.uuid4().hex[:8]}@example.com"


async def _invite(
    client: AsyncClient, tenant: TenantHandle, email: str, role: str = "member"
) -> dict[str, Any]:
    response = await client.post("/v1/members", json={"email": email, "role": role}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _accept(client: AsyncClient, token: str, password: str | None = PASSWORD) -> Response:
    body: dict[str, Any] = {"token": token}
    if password is not None:
        body["password"] = password
    return await client.post("/v1/invitations/accept", json=body)


async def _login(client: AsyncClient, email: str, tenant: str, password: str = PASSWORD) -> Response:
    return await client.post("/v1/auth/login", json={"email": email, "password": password, "tenant": tenant})


def _signup_body(email: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "name": "Squat",
        "slug": f"s-{uuid.uuid4().hex[:8]}",
        "owner_email": email,
        "owner_password": password,
    }


# -- invitations ------------------------------------------------------------------------------------------


async def test_signup_cannot_claim_an_invited_address(client: AsyncClient, tenant_a: TenantHandle) -> None:
    email = _email()
    invited = await _invite(client, tenant_a, email)
    # Someone else signs up first with the invited address: refused, nothing attached to it.
    _problem(
        await client.post("/v1/tenants", json=_signup_body(email, "attacker password")), 409, "EMAIL_TAKEN"
    )
    # The invited person still joins with their token and the password they choose.
    joined = await _accept(client, invited["invitation_token"])
    assert joined.status_code == 200, joined.text
    assert joined.json() == {"tenant_id": tenant_a.id, "user_id": invited["user_id"], "role": "member"}
    member = await client.get(f"/v1/members/{invited['user_id']}", headers=tenant_a.headers)
    assert member.json()["invited"] is False
    assert (await _login(client, email, tenant_a.slug)).status_code == 200
    # ...and the attacker's password opens nothing.
    _problem(await _login(client, email, tenant_a.slug, "attacker password"), 401, "INVALID_CREDENTIALS")


async def test_signup_answers_alike_for_invited_and_registered_addresses(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    invited = _email()
    await _invite(client, tenant_a, invited)
    one = _problem(
        await client.post("/v1/tenants", json=_signup_body(invited, "guess password")), 409, "EMAIL_TAKEN"
    )
    two = _problem(
        await client.post("/v1/tenants", json=_signup_body(tenant_a.owner_email, "guess password")),
        409,
        "EMAIL_TAKEN",
    )
    assert one["detail"] == two["detail"]
    assert one["title"] == two["title"]


async def test_an_invitation_is_single_use_and_only_for_its_holder(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    invited = await _invite(client, tenant_a, _email())
    _problem(await _accept(client, "aigos_inv_" + "x" * 43), 401, "INVALID_INVITATION")
    _problem(await _accept(client, invited["invitation_token"], None), 400, "PASSWORD_REQUIRED")
    assert (await _accept(client, invited["invitation_token"])).status_code == 200
    _problem(await _accept(client, invited["invitation_token"]), 401, "INVALID_INVITATION")


async def test_an_existing_account_accepts_with_its_own_password(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    invited = await _invite(client, tenant_a, tenant_b.owner_email, role="viewer")
    _problem(
        await _accept(client, invited["invitation_token"], "not their password"), 401, "INVALID_CREDENTIALS"
    )
    # A pending member cannot sign in to the tenant yet.
    _problem(await _login(client, tenant_b.owner_email, tenant_a.slug), 401, "INVALID_CREDENTIALS")
    assert (await _accept(client, invited["invitation_token"])).status_code == 200
    assert (await _login(client, tenant_b.owner_email, tenant_a.slug)).status_code == 200


async def test_adding_a_member_does_not_tell_who_is_registered(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    registered = await _invite(client, tenant_a, tenant_b.owner_email)
    unknown = await _invite(client, tenant_a, _email())
    for body in (registered, unknown):
        body.pop("user_id"), body.pop("email"), body.pop("invitation_token")
        body.pop("created_at"), body.pop("updated_at"), body.pop("invitation_expires_at")
    assert registered == unknown == {"role": "member", "invited": True}


# -- sign-in ----------------------------------------------------------------------------------------------


async def test_the_owner_signs_in_and_out(client: AsyncClient, tenant_a: TenantHandle) -> None:
    response = await _login(client, tenant_a.owner_email.upper(), tenant_a.slug)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    session = response.json()
    assert session["token"].startswith("aigos_sess_")
    assert session["tenant_id"] == tenant_a.id
    assert session["role"] == "owner"
    assert session["scopes"] == ["admin"]
    headers = {"Authorization": f"Bearer {session['token']}"}
    # The session works on the admin API with the owner's power, e.g. to mint a new owner key.
    minted = await client.post("/v1/api-keys", json={"name": "new", "scopes": ["admin"]}, headers=headers)
    assert minted.status_code == 201, minted.text
    assert (await client.post("/v1/auth/logout", headers=headers)).status_code == 204
    _problem(await client.get("/v1/members", headers=headers), 401, "INVALID_SESSION")
    by_id = await _login(client, tenant_a.owner_email, tenant_a.id)
    assert by_id.status_code == 200


async def test_sign_in_failures_all_look_alike(client: AsyncClient, tenant_a: TenantHandle) -> None:
    answers = [
        _problem(
            await _login(client, tenant_a.owner_email, tenant_a.slug, "wrong password"),
            401,
            "INVALID_CREDENTIALS",
        ),
        _problem(await _login(client, _email(), tenant_a.slug), 401, "INVALID_CREDENTIALS"),
        _problem(await _login(client, tenant_a.owner_email, "no-such-tenant"), 401, "INVALID_CREDENTIALS"),
    ]
    assert len({answer["detail"] for answer in answers}) == 1


async def test_a_viewer_session_only_reads(client: AsyncClient, tenant_a: TenantHandle) -> None:
    email = _email()
    invited = await _invite(client, tenant_a, email, role="viewer")
    assert (await _accept(client, invited["invitation_token"])).status_code == 200
    session = (await _login(client, email, tenant_a.slug)).json()
    headers = {"Authorization": f"Bearer {session['token']}"}
    assert (await client.get("/v1/members", headers=headers)).status_code == 200
    _problem(
        await client.post("/v1/members", json={"email": _email()}, headers=headers), 403, "INSUFFICIENT_SCOPE"
    )
    # Removing the member ends their session at once.
    assert (
        await client.delete(f"/v1/members/{invited['user_id']}", headers=tenant_a.headers)
    ).status_code == 204
    _problem(await client.get("/v1/members", headers=headers), 401, "INVALID_SESSION")


async def test_guessing_a_password_is_throttled(client: AsyncClient, tenant_a: TenantHandle) -> None:
    for _ in range(20):  # AIGOS_AUTH_FAILURES_PER_CLIENT
        _problem(
            await _login(client, tenant_a.owner_email, tenant_a.slug, "a wrong guess"),
            401,
            "INVALID_CREDENTIALS",
        )
    refused = await _login(client, tenant_a.owner_email, tenant_a.slug)
    _problem(refused, 429, "RATE_LIMITED")
    assert int(refused.headers["retry-after"]) >= 1


# -- signup and recovery ----------------------------------------------------------------------------------


async def test_anonymous_signup_is_rate_limited_per_address(client: AsyncClient) -> None:
    for index in range(SIGNUPS_PER_ADDRESS):
        await signup(client, f"T{index}")
    refused = await client.post("/v1/tenants", json=_signup_body(_email()))
    _problem(refused, 429, "RATE_LIMITED")
    assert int(refused.headers["retry-after"]) >= 1
    # The platform admin creating tenants is not an anonymous signup.
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await client.post("/v1/tenants", json=_signup_body(_email()), headers=admin)).status_code == 201


async def test_the_platform_admin_issues_a_recovery_key(
    client: AsyncClient, tenant_a: TenantHandle, admin_headers: dict[str, str]
) -> None:
    # The owner lost (revoked) the only key.
    assert (
        await client.delete(f"/v1/api-keys/{tenant_a.key_id}", headers=tenant_a.headers)
    ).status_code == 204
    path = f"/v1/platform/tenants/{tenant_a.id}/recovery-key"
    _problem(await client.post(path, headers=tenant_a.headers), 401, "API_KEY_REVOKED")
    response = await client.post(path, headers=admin_headers)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    key = response.json()
    assert key["scopes"] == ["admin"]
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert (await client.get(f"/v1/tenants/{tenant_a.id}", headers=headers)).status_code == 200
    events = await client.get(
        "/v1/audit/events", params={"event_type": "api_key.recovery_issued"}, headers=headers
    )
    assert events.status_code == 200, events.text
    [event] = events.json()["data"]
    assert event["actor"]["type"] == "platform"
    _problem(
        await client.post(f"/v1/platform/tenants/{uuid.uuid4()}/recovery-key", headers=admin_headers),
        404,
        "TENANT_NOT_FOUND",
    )
    _problem(await client.post(path, headers=headers), 403, "PLATFORM_ONLY")
