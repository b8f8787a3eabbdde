"""The policy API on both backends: CRUD with versions, validation problems, the check, simulate, bundles."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from aigos.core import policy as core
from aigos.core.signing import unb64url, verify
from tests.helpers import TenantHandle
from tests.identity.helpers import access_token, assert_problem, bearer, pointers, register
from tests.policy.helpers import CAPS, check, create_policy


@pytest.fixture
async def agent(client: AsyncClient, tenant_a: TenantHandle) -> dict[str, Any]:
    return await register(
        client, tenant_a, capabilities=CAPS, agent_type="research", metadata={"team": "blue"}
    )


# -- CRUD and versions -------------------------------------------------------------------------------------


async def test_every_change_is_a_version_and_old_versions_stay_readable(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    created = await create_policy(client, tenant_a, rules=[{"effect": "deny", "actions": ["delete"]}])
    assert created["version"] == 1
    assert created["rules"][0]["id"] == "rule-1"
    policy_id = created["id"]
    got = await client.get(f"/v1/policies/{policy_id}", headers=tenant_a.headers)
    assert got.status_code == 200
    assert got.headers["etag"] == '"1"'
    assert got.json() == created

    replaced = await client.put(
        f"/v1/policies/{policy_id}",
        json={"name": "p2", "mode": "dry_run", "rules": []},
        headers={**tenant_a.headers, "If-Match": '"1"'},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["version"] == 2
    assert replaced.json()["name"] == "p2"

    stale = await client.put(
        f"/v1/policies/{policy_id}", json={"name": "p3"}, headers={**tenant_a.headers, "If-Match": '"1"'}
    )
    assert assert_problem(stale, 412, "PRECONDITION_FAILED")["current_version"] == 2

    deleted = await client.delete(f"/v1/policies/{policy_id}", headers=tenant_a.headers)
    assert deleted.status_code == 204
    gone = await client.get(f"/v1/policies/{policy_id}", headers=tenant_a.headers)
    assert_problem(gone, 404, "POLICY_NOT_FOUND")

    versions = await client.get(f"/v1/policies/{policy_id}/versions", headers=tenant_a.headers)
    assert versions.status_code == 200
    assert [(v["version"], v["change"]) for v in versions.json()] == [
        (1, "created"),
        (2, "updated"),
        (3, "deleted"),
    ]
    assert versions.json()[0]["document"]["rules"][0]["effect"] == "deny"
    first = await client.get(f"/v1/policies/{policy_id}/versions/1", headers=tenant_a.headers)
    assert first.status_code == 200
    assert first.json()["document"]["name"] == "p"
    missing = await client.get(f"/v1/policies/{policy_id}/versions/9", headers=tenant_a.headers)
    assert_problem(missing, 404, "POLICY_VERSION_NOT_FOUND")

    events = await client.get(
        "/v1/audit/events", params={"event_type": "policy.*", "limit": 10}, headers=tenant_a.headers
    )
    assert [e["event_type"] for e in events.json()["data"]] == [
        "policy.deleted",
        "policy.updated",
        "policy.created",
    ]


async def test_list_filters_and_pages(
    client: AsyncClient, tenant_a: TenantHandle, agent: dict[str, Any]
) -> None:
    await create_policy(client, tenant_a, name="a", mode="dry_run")
    await create_policy(client, tenant_a, name="b", target={"kind": "agent", "agent_id": agent["agent_id"]})
    await create_policy(client, tenant_a, name="c", enabled=False)
    listed = await client.get("/v1/policies", params={"limit": 2}, headers=tenant_a.headers)
    assert listed.status_code == 200
    body = listed.json()
    assert body["total"] == 3
    assert len(body["policies"]) == 2
    assert body["page"] == 1
    names = lambda r: [p["name"] for p in r.json()["policies"]]  # noqa: E731
    by_mode = await client.get("/v1/policies", params={"mode": "dry_run"}, headers=tenant_a.headers)
    assert names(by_mode) == ["a"]
    by_agent = await client.get(
        "/v1/policies", params={"agent_id": agent["agent_id"]}, headers=tenant_a.headers
    )
    assert names(by_agent) == ["b"]
    disabled = await client.get("/v1/policies", params={"enabled": "false"}, headers=tenant_a.headers)
    assert names(disabled) == ["c"]


@pytest.mark.parametrize(
    ("spec", "pointer"),
    [
        ({"domains": {"deny": ["*evil.com"]}}, "/domains/deny/0"),
        ({"domains": {"allow": ["api.*.com"]}}, "/domains/allow/0"),
        ({"rules": [{"effect": "deny", "actions": ["re[a]d"]}]}, "/rules/0/actions/0"),
        ({"rules": [{"effect": "deny", "conditions": {"tools": ["a b"]}}]}, "/rules/0/conditions/tools/0"),
        (
            {"rules": [{"effect": "deny", "conditions": {"time": {"timezone": "Mars/Olympus"}}}]},
            "/rules/0/conditions/time/timezone",
        ),
        (
            {"rules": [{"effect": "deny", "conditions": {"time": {"start": "25:00", "end": "26:00"}}}]},
            "/rules/0/conditions/time/start",
        ),
        ({"rules": [{"id": "x", "effect": "deny"}, {"id": "x", "effect": "allow"}]}, "/rules/1/id"),
        ({"rules": [{"effect": "maybe"}]}, "/rules/0/effect"),
        ({"rules": [{"effect": "deny", "conditions": {"colour": "red"}}]}, "/rules/0/conditions/colour"),
        ({"budget": {"limit": -1}}, "/budget/limit"),
        ({"target": {"kind": "agent"}}, "/target"),
        ({"target": {"kind": "agent", "agent_id": str(uuid.uuid4())}}, "/target/agent_id"),
    ],
)
async def test_invalid_policies_are_refused_with_a_pointer_to_the_field(
    client: AsyncClient, tenant_a: TenantHandle, spec: dict[str, Any], pointer: str
) -> None:
    response = await client.post("/v1/policies", json={"name": "bad", **spec}, headers=tenant_a.headers)
    assert pointer in pointers(response)


async def test_scopes_and_tenants_are_enforced(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle, agent: dict[str, Any]
) -> None:
    created = await create_policy(client, tenant_a)
    other = await client.get(f"/v1/policies/{created['id']}", headers=tenant_b.headers)
    assert_problem(other, 404, "POLICY_NOT_FOUND")
    # Another tenant's agent cannot be targeted: it is "no such agent" there.
    foreign = await client.post(
        "/v1/policies",
        json={"name": "x", "target": {"kind": "agent", "agent_id": agent["agent_id"]}},
        headers=tenant_b.headers,
    )
    assert "/target/agent_id" in pointers(foreign)
    reader = await client.post(
        "/v1/api-keys", json={"name": "ro", "scopes": ["policies:read"]}, headers=tenant_a.headers
    )
    key = {"Authorization": f"Bearer {reader.json()['key']}"}
    assert (await client.get("/v1/policies", headers=key)).status_code == 200
    assert_problem(
        await client.post("/v1/policies", json={"name": "x"}, headers=key), 403, "INSUFFICIENT_SCOPE"
    )
    # An agent token is not an admin credential, and an admin key is not an agent token.
    assert (await client.get("/v1/policies", headers=bearer(agent["identity_token"]))).status_code == 401
    denied = await client.post(
        "/v1/policies/check", json={"action": "a", "resource": "r"}, headers=tenant_a.headers
    )
    assert denied.status_code == 401


# -- the check ---------------------------------------------------------------------------------------------


async def test_check_follows_the_chain_and_records_each_decision(
    app: FastAPI, client: AsyncClient, tenant_a: TenantHandle, agent: dict[str, Any]
) -> None:
    token = agent["identity_token"]
    await create_policy(
        client,
        tenant_a,
        name="guard",
        domains={"deny": ["secret.company.com"]},
        budget={"limit": 5, "period": "daily"},
        rules=[
            {"id": "no-delete", "effect": "deny", "actions": ["delete"], "description": "Deleting is off."},
            {"id": "reads", "effect": "allow", "actions": ["read"], "resources": ["doc/*"]},
        ],
    )
    allowed = await check(
        client, token, "read", "doc/1", tool="web_search", domain="api.company.com", estimated_cost=2
    )
    assert allowed["allowed"] is True
    assert allowed["matched_rule"] == "reads"
    assert allowed["budget_remaining"] == 3.0
    assert allowed["policy_version"] == 1
    assert allowed["latency_ms"] >= 0
    assert uuid.UUID(allowed["decision_id"])

    cases = [
        ({"tool": "shell"}, "CAPABILITY_DENIED", "capability"),
        ({"domain": "example.org"}, "CAPABILITY_DENIED", "capability"),
        ({"estimated_cost": 4}, "BUDGET_EXCEEDED", "budget"),
        ({"domain": "https://secret.company.com:443/x"}, "RESOURCE_DENIED", "domain"),
    ]
    for context, code, stage in cases:
        decision = await check(client, token, "read", "doc/1", **context)
        assert (decision["allowed"], decision["code"], decision["stage"]) == (False, code, stage), decision
    denied = await check(client, token, "DELETE", "doc/1")
    assert (denied["code"], denied["matched_rule"], denied["reason"]) == (
        "CUSTOM_DENIED",
        "no-delete",
        "Deleting is off.",
    )

    traced = await client.post(
        "/v1/policies/check",
        json={"action": "read", "resource": "doc/2", "trace": True},
        headers=bearer(token),
    )
    assert [step["stage"] for step in traced.json()["trace"]] == list(core.STAGES)

    await app.state.runtime.events.flush(everything=True)

    events = await client.get(
        "/v1/audit/events", params={"agent_id": agent["agent_id"], "limit": 50}, headers=tenant_a.headers
    )
    kinds = [e["event_type"] for e in events.json()["data"]]
    assert kinds.count("policy.checked") == 2
    assert kinds.count("policy.violated") == 4
    assert kinds.count("budget.exceeded") == 1


async def test_a_dry_run_policy_reports_but_never_denies(
    client: AsyncClient, tenant_a: TenantHandle, agent: dict[str, Any]
) -> None:
    await create_policy(
        client,
        tenant_a,
        name="watch",
        mode="dry_run",
        rules=[{"id": "w", "effect": "deny", "actions": ["write"]}],
    )
    decision = await check(client, agent["identity_token"], "write", "doc")
    assert decision["allowed"] is True
    assert decision["would_deny"] == [
        {
            "policy_id": decision["would_deny"][0]["policy_id"],
            "rule": "w",
            "code": "CUSTOM_DENIED",
            "reason": "Denied by rule 'w'.",
        }
    ]


async def test_targeting_by_agent_and_selector(
    client: AsyncClient, tenant_a: TenantHandle, agent: dict[str, Any]
) -> None:
    other = await register(client, tenant_a, capabilities=CAPS, agent_type="coder")
    await create_policy(
        client,
        tenant_a,
        name="researchers",
        target={"kind": "selector", "selector": {"agent_type": ["research"], "labels": {"team": "blue"}}},
        rules=[{"effect": "deny", "actions": ["publish"]}],
    )
    await create_policy(
        client,
        tenant_a,
        name="the coder",
        target={"kind": "agent", "agent_id": other["agent_id"]},
        rules=[{"effect": "deny", "actions": ["deploy"]}],
    )
    assert (await check(client, agent["identity_token"], "publish"))["allowed"] is False
    assert (await check(client, agent["identity_token"], "deploy"))["allowed"] is True
    assert (await check(client, other["identity_token"], "publish"))["allowed"] is True
    assert (await check(client, other["identity_token"], "deploy"))["allowed"] is False

    # Attributes changed through the registry retarget the agent at once.
    changed = await client.patch(
        f"/v1/agents/{agent['agent_id']}", json={"metadata": {"team": "red"}}, headers=tenant_a.headers
    )
    assert changed.status_code == 200
    assert (await check(client, agent["identity_token"], "publish"))["allowed"] is True


async def test_a_policy_change_applies_to_the_next_check(
    client: AsyncClient, tenant_a: TenantHandle, agent: dict[str, Any]
) -> None:
    token = agent["identity_token"]
    assert (await check(client, token, "export"))["allowed"] is True
    created = await create_policy(client, tenant_a, rules=[{"effect": "deny", "actions": ["export"]}])
    assert (await check(client, token, "export"))["policy_version"] == 1
    assert (await check(client, token, "export"))["allowed"] is False
    response = await client.put(
        f"/v1/policies/{created['id']}", json={"name": "p", "enabled": False}, headers=tenant_a.headers
    )
    assert response.status_code == 200
    assert (await check(client, token, "export"))["allowed"] is True


async def test_a_suspended_or_paused_agent(
    client: AsyncClient, tenant_a: TenantHandle, agent: dict[str, Any]
) -> None:
    token = agent["identity_token"]
    suspended = await client.post(f"/v1/agents/{agent['agent_id']}/suspend", headers=tenant_a.headers)
    assert suspended.status_code == 200
    response = await client.post(
        "/v1/policies/check", json={"action": "a", "resource": "r"}, headers=bearer(token)
    )
    assert_problem(response, 401, "AGENT_SUSPENDED")


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"resource": "r"}, "/action"),
        ({"action": "", "resource": "r"}, "/action"),
        ({"action": "a", "resource": "r", "context": {"estimated_cost": -1}}, "/context/estimated_cost"),
        ({"action": "a", "resource": "r", "context": {"estimated_cost": "lots"}}, "/context/estimated_cost"),
        ({"action": "a" * 300, "resource": "r"}, "/action"),
    ],
)
async def test_bad_checks_are_problems(
    client: AsyncClient, agent: dict[str, Any], body: dict[str, Any], pointer: str
) -> None:
    response = await client.post("/v1/policies/check", json=body, headers=bearer(agent["identity_token"]))
    assert pointer in pointers(response)


# -- simulate and bundles ----------------------------------------------------------------------------------


async def test_simulate_a_draft_before_saving_it(
    app: FastAPI, client: AsyncClient, tenant_a: TenantHandle, agent: dict[str, Any]
) -> None:
    saved = await create_policy(
        client, tenant_a, rules=[{"id": "no-export", "effect": "deny", "actions": ["export"]}]
    )
    request = {"action": "export", "resource": "db"}
    current = await client.post(
        "/v1/policies/simulate",
        json={"agent_id": agent["agent_id"], "request": request},
        headers=tenant_a.headers,
    )
    assert current.status_code == 200, current.text
    assert current.json()["code"] == "CUSTOM_DENIED"
    assert len(current.json()["trace"]) == 5

    draft = {"id": saved["id"], "name": "p", "rules": [{"effect": "allow", "actions": ["export"]}]}
    replaced = await client.post(
        "/v1/policies/simulate",
        json={"agent_id": agent["agent_id"], "request": request, "policies": [draft]},
        headers=tenant_a.headers,
    )
    assert replaced.json()["allowed"] is True
    hypothetical = await client.post(
        "/v1/policies/simulate",
        json={"agent": {"status": "paused"}, "request": request, "only_drafts": True},
        headers=tenant_a.headers,
    )
    assert hypothetical.json()["code"] == "PAUSED"
    bad = await client.post(
        "/v1/policies/simulate",
        json={"agent": {}, "request": request, "policies": [{"name": "d", "domains": {"deny": ["a.*"]}}]},
        headers=tenant_a.headers,
    )
    assert "/policies/0/domains/deny/0" in pointers(bad)
    neither = await client.post("/v1/policies/simulate", json={"request": request}, headers=tenant_a.headers)
    assert_problem(neither, 400, "VALIDATION_FAILED")
    # Simulating spends nothing and records nothing.
    await app.state.runtime.events.flush(everything=True)
    events = await client.get(
        "/v1/audit/events", params={"event_type": "policy.checked"}, headers=tenant_a.headers
    )
    assert events.json()["data"] == []


async def test_the_bundle_is_signed_and_decides_like_the_server(
    client: AsyncClient, tenant_a: TenantHandle, agent: dict[str, Any]
) -> None:
    await create_policy(
        client,
        tenant_a,
        domains={"deny": ["*.internal.company.com"]},
        rules=[{"effect": "deny", "actions": ["rm"]}],
    )
    token = agent["identity_token"]
    response = await client.get("/v1/policies/bundle", headers=bearer(token))
    assert response.status_code == 200, response.text
    signed = response.json()
    keys = (await client.get("/v1/policies/keys")).json()["keys"]
    key = next(k for k in keys if k["key_id"] == signed["key_id"])
    assert verify(unb64url(key["public_key"]), signed["payload"], signed["signature"])
    tampered = {**signed["payload"], "policies": []}
    assert not verify(unb64url(key["public_key"]), tampered, signed["signature"])

    bundle = core.Bundle.from_payload(signed["payload"])
    for action, context in [
        ("rm", {}),
        ("ls", {}),
        ("ls", {"domain": "a.internal.company.com"}),
        ("ls", {"tool": "x"}),
    ]:
        local = bundle.evaluate(core.Request.of(action, "r", context))
        remote = await check(client, token, action, "r", **context)
        assert (local.allowed, local.code) == (remote["allowed"], remote["code"]), (action, context)

    again = await client.get(
        "/v1/policies/bundle", headers={**bearer(token), "If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304
    await create_policy(client, tenant_a, name="more")
    changed = await client.get(
        "/v1/policies/bundle", headers={**bearer(token), "If-None-Match": response.headers["etag"]}
    )
    assert changed.status_code == 200
    assert changed.json()["payload"]["version"] == 2


async def test_the_check_needs_the_policies_check_scope(client: AsyncClient, agent: dict[str, Any]) -> None:
    narrow = await access_token(client, agent, scope="agent")
    response = await client.post(
        "/v1/policies/check", json={"action": "a", "resource": "r"}, headers=bearer(narrow)
    )
    assert assert_problem(response, 403, "INSUFFICIENT_SCOPE")["scope"] == "policies:check"
    scoped = await access_token(client, agent, scope="policies:check")
    assert (await check(client, scoped))["allowed"] is True


async def test_a_tenant_may_count_allowed_decisions_per_minute(
    app: FastAPI, client: AsyncClient, tenant_a: TenantHandle, agent: dict[str, Any]
) -> None:
    token = agent["identity_token"]
    await check(client, token)  # the replica now holds the tenant's set, with the setting off
    changed = await client.put(
        f"/v1/tenants/{tenant_a.id}",
        json={"settings": {"aggregate_allowed_decisions": True}},
        headers=tenant_a.headers,
    )
    assert changed.status_code == 200, changed.text
    for _ in range(3):
        assert (await check(client, token))["allowed"] is True
    assert (await check(client, token, tool="shell"))["allowed"] is False
    await app.state.runtime.events.flush(everything=True)
    listed = await client.get(
        "/v1/audit/events", params={"event_type": "policy.*", "limit": 20}, headers=tenant_a.headers
    )
    kinds = [event["event_type"] for event in listed.json()["data"]]
    # The first check was recorded one by one; the three after the change only as a count; denials always.
    assert kinds.count("policy.checked") == 1
    assert kinds.count("policy.violated") == 1
    aggregated = [
        event for event in listed.json()["data"] if event["event_type"] == "policy.decisions_aggregated"
    ]
    assert [event["data"]["count"] for event in aggregated] == [3]
    assert aggregated[0]["data"]["by_agent"] == {agent["agent_id"]: 3}
