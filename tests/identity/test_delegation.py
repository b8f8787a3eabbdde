"""Delegation dies with its delegator: an exchanged token stops working when the agent or token it was
exchanged from stops, and never outlives the token it came from."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient, Response

from tests.helpers import TenantHandle
from tests.identity.helpers import access_token, bearer, claims_of, create, exchange, family, oauth_error


async def check(client: AsyncClient, token: str) -> Response:
    """``POST /v1/policies/check`` with an agent token (any answer)."""
    body = {"action": "read", "resource": "doc", "context": {}}
    return await client.post("/v1/policies/check", json=body, headers=bearer(token))


async def delegated(
    client: AsyncClient, tenant: TenantHandle
) -> tuple[dict[str, Any], str, dict[str, Any], str, dict[str, Any]]:
    """Parent P with a token, child C with a token exchanged from it, and a grandchild G under C."""
    parent, token, child = await family(client, tenant)
    grandchild = await create(
        client, tenant, name="grandchild", parent_id=child["id"], capabilities={"max_budget": 1}
    )
    exchanged = await exchange(client, token, child["id"])
    assert exchanged.status_code == 200, exchanged.text
    child_token: str = exchanged.json()["access_token"]
    assert (await check(client, child_token)).status_code == 200
    return parent, token, child, child_token, grandchild


def refused(response: Response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == code, response.json()


async def test_suspended_delegator_stops_the_delegation(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent, _, child, child_token, grandchild = await delegated(client, tenant_a)
    suspended = await client.post(f"/v1/agents/{parent['agent_id']}/suspend", headers=tenant_a.headers)
    assert suspended.status_code == 200, suspended.text
    refused(await check(client, child_token), "DELEGATOR_SUSPENDED")
    # Nor can the child delegate further with it.
    body = oauth_error(await exchange(client, child_token, grandchild["id"]), 400, "invalid_grant")
    assert "suspended" in body["error_description"]
    # The child itself is untouched, and the delegation works again once the parent is back.
    assert (await client.get(f"/v1/agents/{child['id']}", headers=tenant_a.headers)).json()[
        "status"
    ] == "active"
    reactivated = await client.post(f"/v1/agents/{parent['agent_id']}/reactivate", headers=tenant_a.headers)
    assert reactivated.status_code == 200
    assert (await check(client, child_token)).status_code == 200
    assert (await exchange(client, child_token, grandchild["id"])).status_code == 200


async def test_deregistered_delegator_stops_every_hop(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent, _, _, child_token, grandchild = await delegated(client, tenant_a)
    grandchild_token = (await exchange(client, child_token, grandchild["id"])).json()["access_token"]
    assert (await check(client, grandchild_token)).status_code == 200
    deregistered = await client.delete(f"/v1/agents/{parent['agent_id']}", headers=tenant_a.headers)
    assert deregistered.status_code == 204
    # No cascaded kill needed: both tokens descending from the parent's are refused, on every plane.
    for token in (child_token, grandchild_token):
        refused(await check(client, token), "DELEGATOR_TERMINATED")
        hb = await client.post(f"/v1/agents/{claims_of(token)['sub']}/heartbeat", headers=bearer(token))
        refused(hb, "DELEGATOR_TERMINATED")
    oauth_error(await exchange(client, child_token, grandchild["id"]), 400, "invalid_grant")
    introspected = await client.post(
        "/oauth2/introspect",
        data={"token": child_token},
        auth=(parent["client_id"], parent["client_secret"]),
    )
    # The parent's own secret is revoked with it: it cannot even ask.
    assert introspected.status_code == 401


async def test_revoking_a_token_revokes_what_was_exchanged_from_it(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    parent, token, child, child_token, grandchild = await delegated(client, tenant_a)
    grandchild_token = (await exchange(client, child_token, grandchild["id"])).json()["access_token"]
    auth = (parent["client_id"], parent["client_secret"])
    assert (await client.post("/oauth2/revoke", data={"token": token}, auth=auth)).status_code == 200
    for descendant in (child_token, grandchild_token):
        refused(await check(client, descendant), "TOKEN_REVOKED")
    oauth_error(await exchange(client, child_token, grandchild["id"]), 400, "invalid_grant")
    seen = await client.post("/oauth2/introspect", data={"token": grandchild_token}, auth=auth)
    assert seen.json() == {"active": False}
    # Only that token's descendants: a child token exchanged from another parent token works.
    fresh = (await exchange(client, await access_token(client, parent), child["id"])).json()["access_token"]
    assert (await check(client, fresh)).status_code == 200
    # Resource servers see the same chain: the token ids it descends from, nearest first.
    assert claims_of(grandchild_token)["aigos:ancestor_jtis"] == [
        claims_of(child_token)["jti"],
        claims_of(token)["jti"],
    ]


async def test_revoking_a_middle_token_spares_its_ancestors(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    parent, token, _, child_token, grandchild = await delegated(client, tenant_a)
    grandchild_token = (await exchange(client, child_token, grandchild["id"])).json()["access_token"]
    auth = (parent["client_id"], parent["client_secret"])
    assert (await client.post("/oauth2/revoke", data={"token": child_token}, auth=auth)).status_code == 200
    refused(await check(client, grandchild_token), "TOKEN_REVOKED")
    assert (await check(client, token)).status_code == 200


async def test_paused_delegator_pauses_the_delegation(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent, _, child, child_token, _ = await delegated(client, tenant_a)
    paused = await client.post(
        "/v1/kill-switch/trigger",
        json={"agent_id": parent["agent_id"], "command": "PAUSE", "cascade": False, "reason": "test"},
        headers=tenant_a.headers,
    )
    assert paused.status_code in (200, 201, 202), paused.text
    # The child still authenticates (it can hear its own commands) but acts for a paused parent.
    decision = await check(client, child_token)
    assert decision.status_code == 200, decision.text
    assert (decision.json()["allowed"], decision.json()["code"]) == (False, "PAUSED")
    own = await access_token(client, await _with_secret(client, tenant_a, child))
    assert (await check(client, own)).json().get("code") != "PAUSED"


async def _with_secret(client: AsyncClient, tenant: TenantHandle, agent: dict[str, Any]) -> dict[str, Any]:
    """``agent`` with a client secret of its own."""
    added = await client.post(f"/v1/agents/{agent['id']}/credentials", json={}, headers=tenant.headers)
    assert added.status_code == 201, added.text
    return {"client_id": agent["id"], "client_secret": added.json()["client_secret"]}


async def test_a_child_token_never_outlives_its_parent_token(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle
) -> None:
    _, token, child = await family(client, tenant_a)
    grandchild = await create(
        client, tenant_a, name="grandchild", parent_id=child["id"], capabilities={"max_budget": 1}
    )
    # Tokens issued from now on would live much longer than the parent's.
    app.state.runtime.settings.token_ttl_seconds += 86_400
    parent_exp = claims_of(token)["exp"]
    response = await exchange(client, token, child["id"])
    assert response.status_code == 200, response.text
    child_token = response.json()["access_token"]
    assert claims_of(child_token)["exp"] == parent_exp
    assert response.json()["expires_in"] <= parent_exp - claims_of(child_token)["iat"]
    further = (await exchange(client, child_token, grandchild["id"])).json()["access_token"]
    assert claims_of(further)["exp"] == parent_exp
