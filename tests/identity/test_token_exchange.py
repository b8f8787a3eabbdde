"""Token exchange (RFC 8693): a parent agent obtains a token for its child, never with more than it has."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from httpx import AsyncClient

from tests.helpers import TenantHandle
from tests.identity.helpers import (
    ACCESS_TOKEN,
    TOKEN_EXCHANGE,
    access_token,
    bearer,
    create,
    exchange,
    family,
    heartbeat,
    oauth_error,
    register,
    verified,
)


async def test_parent_obtains_a_child_token(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent, token, child = await family(client, tenant_a)
    response = await exchange(client, token, child["id"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert body["token_type"] == "Bearer"
    assert body["scope"] == jwt.decode(token, options={"verify_signature": False})["scope"]
    claims = await verified(client, body["access_token"], tenant_a.id)
    assert claims["sub"] == claims["client_id"] == child["id"]
    assert claims["act"] == {"sub": parent["agent_id"]}
    assert claims["aigos:lineage"] == {"parent_id": parent["agent_id"], "depth": 1}
    assert claims["aigos:capabilities"] == {
        "tools": ["web_search"],
        "domains": ["api.example.com"],
        "max_budget": 10.0,
    }
    # The child token works for the child, and only for it.
    assert (await heartbeat(client, child["id"], body["access_token"])).status_code == 200
    assert (await heartbeat(client, parent["agent_id"], body["access_token"])).status_code == 404
    # Introspection shows who acts.
    seen = await client.post(
        "/oauth2/introspect",
        data={"token": body["access_token"]},
        auth=(parent["client_id"], parent["client_secret"]),
    )
    assert seen.json()["act"] == {"sub": parent["agent_id"]}
    assert seen.json()["aigos:lineage"]["depth"] == 1
    # A registration-time identity token works as a subject token too.
    again = await exchange(client, parent["identity_token"], child["id"])
    assert again.status_code == 200, again.text


async def test_exchange_chains_nest_the_actors(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent, token, child = await family(client, tenant_a, capabilities={"tools": ["web_*"], "max_budget": 50})
    grandchild = await create(
        client,
        tenant_a,
        name="grandchild",
        parent_id=child["id"],
        capabilities={"tools": ["web_search"], "max_budget": 5},
    )
    child_token = (await exchange(client, token, child["id"])).json()["access_token"]
    response = await exchange(client, child_token, grandchild["id"])
    assert response.status_code == 200, response.text
    claims = await verified(client, response.json()["access_token"], tenant_a.id)
    assert claims["sub"] == grandchild["id"]
    assert claims["act"] == {"sub": child["id"], "act": {"sub": parent["agent_id"]}}
    assert claims["aigos:lineage"] == {"parent_id": child["id"], "depth": 2}
    # The grandparent cannot skip a generation.
    skipped = await exchange(client, token, grandchild["id"])
    oauth_error(skipped, 400, "invalid_target")


@pytest.mark.parametrize(
    ("capabilities", "problem"),
    [
        ({"tools": ["shell"], "max_budget": 10}, "tool 'shell'"),
        ({"tools": ["*"], "max_budget": 10}, "tool '*'"),
        ({"tools": ["web_search", "calc", "db_*"], "max_budget": 10}, "tool 'db_*'"),
        ({"domains": ["evil.com"], "max_budget": 10}, "domain 'evil.com'"),
        ({"domains": ["*"], "max_budget": 10}, "domain '*'"),
        ({"domains": ["example.com"], "max_budget": 10}, "domain 'example.com'"),
        ({"max_budget": 100.01}, "max_budget"),
        ({"tools": ["web_search"]}, "max_budget"),
        # A parent's `?` matches one character, not the child's `*`.
        ({"tools": ["calc*"], "max_budget": 1}, "tool 'calc*'"),
    ],
)
async def test_child_beyond_its_parent_is_privilege_escalation(
    client: AsyncClient, tenant_a: TenantHandle, capabilities: dict[str, Any], problem: str
) -> None:
    parent = await register(
        client,
        tenant_a,
        name="parent",
        capabilities={"tools": ["web_*", "calc", "calc?"], "domains": ["*.example.com"], "max_budget": 100},
    )
    token = await access_token(client, parent)
    # The registry keeps a child within its parent; here the parent was widened after its token was
    # issued, and that token is what the exchange must measure the child against.
    widened = await client.patch(
        f"/v1/agents/{parent['agent_id']}",
        json={"capabilities": {"tools": ["*"], "domains": ["*"]}},
        headers=tenant_a.headers,
    )
    assert widened.status_code == 200, widened.text
    child = await create(
        client, tenant_a, name="child", parent_id=parent["agent_id"], capabilities=capabilities
    )
    response = await exchange(client, token, child["id"])
    body = oauth_error(response, 400, "invalid_target")
    assert "PRIVILEGE_ESCALATION" in body["error_description"]
    assert problem in body["error_description"]


@pytest.mark.parametrize(
    "capabilities",
    [
        {"tools": ["web_search", "WEB_FETCH", "web_*", "calc", "calc1", "calc?"], "max_budget": 100},
        {"domains": ["a.example.com", "*.b.example.com", "*.example.com"], "max_budget": 0},
        {"max_budget": 99.5},
    ],
)
async def test_child_within_its_parent_is_allowed(
    client: AsyncClient, tenant_a: TenantHandle, capabilities: dict[str, Any]
) -> None:
    parent = await register(
        client,
        tenant_a,
        name="parent",
        capabilities={"tools": ["web_*", "calc", "calc?"], "domains": ["*.example.com"], "max_budget": 100},
    )
    child = await create(
        client, tenant_a, name="child", parent_id=parent["agent_id"], capabilities=capabilities
    )
    response = await exchange(client, await access_token(client, parent), child["id"])
    assert response.status_code == 200, response.text


async def test_unlimited_parent_covers_any_budget(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent = await register(client, tenant_a, capabilities={"tools": ["*"], "domains": ["*"]})
    child = await create(
        client, tenant_a, parent_id=parent["agent_id"], capabilities={"tools": ["x*"], "domains": ["*.y.z"]}
    )
    assert (await exchange(client, await access_token(client, parent), child["id"])).status_code == 200


async def test_only_own_children(client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle) -> None:
    parent, token, child = await family(client, tenant_a)
    stranger = await create(client, tenant_a, name="stranger")
    sibling_parent = await register(client, tenant_a, name="sibling-parent")
    within = {"max_budget": 1}
    niece = await create(
        client, tenant_a, name="niece", parent_id=sibling_parent["agent_id"], capabilities=within
    )
    foreign_parent = await register(client, tenant_b, name="foreign")
    foreign_child = await create(
        client, tenant_b, name="foreign-child", parent_id=foreign_parent["agent_id"], capabilities=within
    )
    for target in (
        stranger["id"],
        niece["id"],
        foreign_child["id"],
        parent["agent_id"],
        "00000000-0000-0000-0000-000000000000",
    ):
        oauth_error(await exchange(client, token, target), 400, "invalid_target")
    # A child cannot obtain its parent's token either.
    child_token = (await exchange(client, token, child["id"])).json()["access_token"]
    oauth_error(await exchange(client, child_token, parent["agent_id"]), 400, "invalid_target")


async def test_child_scope_within_the_parent_scope(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent = await register(client, tenant_a, name="parent")
    child = await create(
        client, tenant_a, name="child", parent_id=parent["agent_id"], capabilities={"max_budget": 1}
    )
    narrow = await access_token(client, parent, scope="agent policies:check")
    beyond = await exchange(client, narrow, child["id"], scope="agent telemetry:write")
    oauth_error(beyond, 400, "invalid_scope")
    oauth_error(await exchange(client, narrow, child["id"], scope="admin"), 400, "invalid_scope")
    inherited = await exchange(client, narrow, child["id"])
    assert inherited.status_code == 200, inherited.text
    assert inherited.json()["scope"] == "agent policies:check"
    narrower = await exchange(client, narrow, child["id"], scope="agent")
    assert narrower.json()["scope"] == "agent"
    # The child of a narrowed child cannot widen again.
    grandchild = await create(
        client, tenant_a, name="grandchild", parent_id=child["id"], capabilities={"max_budget": 1}
    )
    widened = await exchange(
        client, narrower.json()["access_token"], grandchild["id"], scope="agent policies:check"
    )
    oauth_error(widened, 400, "invalid_scope")


async def test_subject_token_must_be_valid(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent, token, child = await family(client, tenant_a)
    for bad in ("", "garbage", token[:-4] + "AAAA"):
        oauth_error(await exchange(client, bad, child["id"]), 400, "invalid_grant")
    # A revoked parent token.
    auth = (parent["client_id"], parent["client_secret"])
    assert (await client.post("/oauth2/revoke", data={"token": token}, auth=auth)).status_code == 200
    oauth_error(await exchange(client, token, child["id"]), 400, "invalid_grant")
    # A suspended parent.
    fresh = await access_token(client, parent)
    assert (
        await client.post(f"/v1/agents/{parent['agent_id']}/suspend", headers=tenant_a.headers)
    ).status_code == 200
    body = oauth_error(await exchange(client, fresh, child["id"]), 400, "invalid_grant")
    assert "suspended" in body["error_description"]


async def test_child_must_hold_tokens(client: AsyncClient, tenant_a: TenantHandle) -> None:
    _, token, child = await family(client, tenant_a)
    assert (
        await client.post(f"/v1/agents/{child['id']}/suspend", headers=tenant_a.headers)
    ).status_code == 200
    oauth_error(await exchange(client, token, child["id"]), 400, "invalid_target")
    assert (
        await client.post(f"/v1/agents/{child['id']}/reactivate", headers=tenant_a.headers)
    ).status_code == 200
    issued = await exchange(client, token, child["id"])
    assert issued.status_code == 200
    # Deregistering the child refuses its exchanged tokens as well.
    assert (await client.delete(f"/v1/agents/{child['id']}", headers=tenant_a.headers)).status_code == 204
    oauth_error(await exchange(client, token, child["id"]), 400, "invalid_target")
    hb = await heartbeat(client, child["id"], issued.json()["access_token"])
    assert hb.status_code == 401
    assert hb.json()["code"] == "AGENT_TERMINATED"


async def test_malformed_exchange_requests(client: AsyncClient, tenant_a: TenantHandle) -> None:
    _, token, child = await family(client, tenant_a)
    oauth_error(await exchange(client, token, "not-a-uuid"), 400, "invalid_request")
    oauth_error(await exchange(client, token, ""), 400, "invalid_request")
    oauth_error(
        await exchange(client, token, child["id"], subject_token_type="urn:ietf:params:oauth:token-type:jwt"),
        400,
        "invalid_request",
    )
    oauth_error(
        await exchange(
            client, token, child["id"], requested_token_type="urn:ietf:params:oauth:token-type:refresh_token"
        ),
        400,
        "invalid_request",
    )
    no_type = await client.post(
        "/oauth2/token",
        data={"grant_type": TOKEN_EXCHANGE, "subject_token": token, "requested_agent": child["id"]},
    )
    oauth_error(no_type, 400, "invalid_request")
    explicit = await exchange(client, token, child["id"], requested_token_type=ACCESS_TOKEN)
    assert explicit.status_code == 200


async def test_exchanged_tokens_are_revocable(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent, token, child = await family(client, tenant_a)
    child_token = (await exchange(client, token, child["id"])).json()["access_token"]
    auth = (parent["client_id"], parent["client_secret"])
    assert (await client.post("/oauth2/revoke", data={"token": child_token}, auth=auth)).status_code == 200
    hb = await client.post(f"/v1/agents/{child['id']}/heartbeat", headers=bearer(child_token))
    assert hb.json()["code"] == "TOKEN_REVOKED"
    # The parent's own token is unaffected.
    assert (await heartbeat(client, parent["agent_id"], token)).status_code == 200


async def test_exchange_is_audited(client: AsyncClient, app: Any, tenant_a: TenantHandle) -> None:
    import asyncio

    from tests.identity.helpers import agent_events

    parent, token, child = await family(client, tenant_a)
    assert (await exchange(client, token, child["id"])).status_code == 200
    events: list[dict[str, Any]] = []
    for _ in range(50):
        await app.state.runtime.events.flush(everything=True)
        events = [
            e for e in await agent_events(client, tenant_a) if e["event_type"] == "agent.token_exchanged"
        ]
        if events:
            break
        await asyncio.sleep(0.1)
    (event,) = events
    assert event["agent_id"] == child["id"]
    assert event["data"]["parent_id"] == parent["agent_id"]
