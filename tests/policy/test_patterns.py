"""Adversarial name globs on both backends: a check, a simulation and a token exchange answer right (a
backtracking matcher took seconds to forever on these), and a pattern with too many stars is refused."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient, Response

from aigos.core import globs
from tests.helpers import TenantHandle
from tests.identity.helpers import access_token, exchange, oauth_error, pointers, register
from tests.policy.helpers import check, create_policy

#: Four stars and no ``b`` in the name: O(n^4) steps for ``.*a.*a.*a.*a.*b`` (16 s at 250 characters).
STARRY = "*a*a*a*a*b"
#: As many stars as a pattern may hold: O(n^16) for a backtracking matcher.
MOST_STARS = "*a" * globs.MAX_STARS
TOO_MANY_STARS = MOST_STARS + "*"


async def simulate(client: AsyncClient, tenant: TenantHandle, resource: str, *resources: str) -> Response:
    """``POST /v1/policies/simulate``: a hypothetical agent against one draft denying ``resources``."""
    draft = {"name": "d", "rules": [{"effect": "deny", "actions": ["read"], "resources": list(resources)}]}
    body = {
        "agent": {},
        "request": {"action": "read", "resource": resource},
        "policies": [draft],
        "only_drafts": True,
    }
    return await client.post("/v1/policies/simulate", json=body, headers=tenant.headers)


async def test_a_stored_starry_deny_rule_answers_a_long_resource(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    agent = await register(client, tenant_a)
    rules = [{"id": "starry", "effect": "deny", "actions": ["read"], "resources": [STARRY, MOST_STARS + "b"]}]
    await create_policy(client, tenant_a, rules=rules)
    token = agent["identity_token"]
    assert (await check(client, token, "read", "a" * 250))["allowed"] is True
    assert (await check(client, token, "read", "a" * 2048))["allowed"] is True
    denied = await check(client, token, "read", "a" * 249 + "b")
    assert (denied["allowed"], denied["matched_rule"]) == (False, "starry")
    # /health is answered: the process was not frozen by the checks above.
    assert (await client.get("/health")).status_code == 200


async def test_simulate_with_a_starry_draft_answers(client: AsyncClient, tenant_a: TenantHandle) -> None:
    allowed = await simulate(client, tenant_a, "a" * 250, STARRY)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["allowed"] is True
    denied = await simulate(client, tenant_a, "a" * 2047 + "b", STARRY, MOST_STARS + "b")
    assert denied.status_code == 200, denied.text
    assert (denied.json()["allowed"], denied.json()["code"]) == (False, "CUSTOM_DENIED")


async def test_a_starry_capability_answers_at_check_time(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agent = await register(client, tenant_a, capabilities={"tools": [STARRY, "*a*a*a*a*a*a*a*c"]})
    token = agent["identity_token"]
    outside = await check(client, token, "read", "doc", tool="a" * 256)
    assert (outside["allowed"], outside["code"]) == (False, "CAPABILITY_DENIED")
    assert (await check(client, token, "read", "doc", tool="a" * 255 + "b"))["allowed"] is True


async def test_containment_of_starry_capabilities_answers(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    parent = await register(client, tenant_a, name="parent", capabilities={"tools": [MOST_STARS + "b"]})
    token = await access_token(client, parent)
    within = await _child(client, tenant_a, parent, ["a" * 80 + "*ab"])
    assert within.status_code == 201, within.text
    assert (await exchange(client, token, within.json()["id"])).status_code == 200
    # Not within: refused when the child is created, or else when the parent asks for its token.
    beyond = await _child(client, tenant_a, parent, ["a" * 99 + "*"])
    if beyond.status_code == 201:
        refused = await exchange(client, token, beyond.json()["id"])
        assert "PRIVILEGE_ESCALATION" in oauth_error(refused, 400, "invalid_target")["error_description"]
    else:
        assert beyond.status_code == 403, beyond.text
        assert beyond.json()["code"] == "PRIVILEGE_ESCALATION"


async def _child(
    client: AsyncClient, tenant: TenantHandle, parent: dict[str, Any], tools: list[str]
) -> Response:
    spec = {"name": "child", "parent_id": parent["agent_id"], "capabilities": {"tools": tools}}
    return await client.post("/v1/agents", json=spec, headers=tenant.headers)


async def test_too_many_stars_are_refused_where_patterns_are_written(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    rules = [{"effect": "deny", "actions": ["read"], "resources": ["x", TOO_MANY_STARS]}]
    stored = await client.post("/v1/policies", json={"name": "p", "rules": rules}, headers=tenant_a.headers)
    assert pointers(stored) == {"/rules/0/resources/1"}
    conditions = [{"effect": "deny", "actions": [TOO_MANY_STARS], "conditions": {"tools": [TOO_MANY_STARS]}}]
    stored = await client.post(
        "/v1/policies", json={"name": "p", "rules": conditions}, headers=tenant_a.headers
    )
    assert pointers(stored) == {"/rules/0/actions/0", "/rules/0/conditions/tools/0"}
    assert pointers(await simulate(client, tenant_a, "a", TOO_MANY_STARS)) == {
        "/policies/0/rules/0/resources/0"
    }
    starry_tools = {"name": "bot", "capabilities": {"tools": ["calc", TOO_MANY_STARS]}}
    created = await client.post("/v1/agents", json=starry_tools, headers=tenant_a.headers)
    assert pointers(created) == {"/capabilities/tools"}
    registered = await client.post("/v1/agents/register", json=starry_tools, headers=tenant_a.headers)
    assert pointers(registered) == {"/capabilities/tools"}
    agent = await register(client, tenant_a)
    updated = await client.patch(
        f"/v1/agents/{agent['agent_id']}",
        json={"capabilities": {"tools": [TOO_MANY_STARS]}},
        headers=tenant_a.headers,
    )
    assert pointers(updated) == {"/capabilities/tools"}
    hypothetical = await client.post(
        "/v1/policies/simulate",
        json={
            "agent": {"capabilities": {"tools": [TOO_MANY_STARS]}},
            "request": {"action": "a", "resource": "b"},
        },
        headers=tenant_a.headers,
    )
    assert any(pointer.startswith("/agent/capabilities") for pointer in pointers(hypothetical))
    # The most stars a pattern may hold are accepted.
    assert (await create_policy(client, tenant_a, rules=[{"effect": "allow", "resources": [MOST_STARS]}]))[
        "version"
    ] == 1
