"""The agent registry: create, read, list, change, lifecycle, plan limits, lineage, liveness, Golden
Thread."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from httpx import AsyncClient

from tests.aigrc.cards import uploaded
from tests.helpers import TenantHandle, signup
from tests.identity.helpers import (
    CAPABILITIES,
    access_token,
    agent_events,
    assert_problem,
    bearer,
    claims_of,
    client_token,
    create,
    heartbeat,
    pointers,
    register,
)

GOLDEN = {
    "hash": "sha256:bb085280036c278a6478b90f67d09cfcb6bcc7484d13229d7eba509bdb4685f7",
    "ticket_id": "FIN-1234",
    "approved_by": "ciso@corp.com",
    "approved_at": "2025-01-15T10:30:00Z",
}

# -- create and read --------------------------------------------------------------------------------------


async def test_create_returns_the_full_record_and_get_reads_it(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    await uploaded(client, tenant_a, "aigrc-2025-00000042")
    spec = {
        "name": "Research bot",
        "email": "  Research@Example.COM ",
        "description": "Finds things",
        "agent_type": "researcher",
        "version": "2.1.0-beta.1+build.7",
        "owner": "team-research",
        "deployment_env": "staging",
        "capabilities": {
            "tools": ["web_*"],
            "domains": ["Docs.Example.com", "*.example.org"],
            "max_budget": 5,
        },
        "asset_card_id": "aigrc-2025-00000042",
        "metadata": {"cost_center": "R&D", "nested": {"a": [1, 2]}},
    }
    body = await create(client, tenant_a, **spec)
    assert uuid.UUID(body["id"])
    assert body["client_id"] == body["id"]
    assert body["tenant_id"] == tenant_a.id
    assert body["email"] == "research@example.com"
    assert body["status"] == "active"
    assert body["liveness"] == "offline"
    assert body["last_seen_at"] is None
    assert body["lineage"] == {"parent_id": None, "depth": 0}
    assert body["capabilities"] == {
        "tools": ["web_*"],
        "domains": ["docs.example.com", "*.example.org"],
        "max_budget": 5.0,
    }
    assert body["metadata"] == spec["metadata"]
    # Registered against its asset card, the agent carries the card's Golden Thread.
    assert body["golden_thread"]["source"] == "asset_card"
    assert body["golden_thread"]["verified"] is True
    for field in ("name", "description", "agent_type", "version", "owner", "deployment_env", "asset_card_id"):
        assert body[field] == spec[field], field

    got = await client.get(f"/v1/agents/{body['id']}", headers=tenant_a.headers)
    assert got.status_code == 200
    assert got.json() == body


async def test_defaults(client: AsyncClient, tenant_a: TenantHandle) -> None:
    body = await create(client, tenant_a)
    assert body["agent_type"] == "generic"
    assert body["version"] == "1.0.0"
    assert body["deployment_env"] == "development"
    assert body["capabilities"] == {"tools": [], "domains": [], "max_budget": None}
    assert body["metadata"] == {}
    assert body["email"] is None


async def test_unknown_agent_is_404(client: AsyncClient, tenant_a: TenantHandle) -> None:
    response = await client.get(f"/v1/agents/{uuid.uuid4()}", headers=tenant_a.headers)
    assert_problem(response, 404, "AGENT_NOT_FOUND")
    malformed = await client.get("/v1/agents/not-a-uuid", headers=tenant_a.headers)
    assert malformed.status_code in (400, 404, 422)


async def test_registry_needs_a_tenant_key(client: AsyncClient, tenant_a: TenantHandle) -> None:
    assert (await client.get("/v1/agents")).status_code == 401
    assert (await client.post("/v1/agents", json={"name": "x"})).status_code == 401
    reg = await register(client, tenant_a)
    # An agent token is not an admin credential.
    refused = await client.get("/v1/agents", headers=bearer(reg["identity_token"]))
    assert refused.status_code == 401


async def test_register_returns_credentials_and_a_working_token(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a, name="registered")
    assert reg["client_id"] == reg["agent_id"] == reg["agent"]["id"]
    assert reg["client_secret"].startswith("aigos_cs_")
    assert reg["token_type"] == "Bearer"
    claims = claims_of(reg["identity_token"])
    assert claims["sub"] == reg["agent_id"]
    assert claims["aud"] == tenant_a.id
    assert claims["aigos:capabilities"] == CAPABILITIES
    assert (await heartbeat(client, reg["agent_id"], reg["identity_token"])).status_code == 200
    assert (await client_token(client, reg["client_id"], reg["client_secret"])).status_code == 200


# -- list -------------------------------------------------------------------------------------------------


async def test_list_filters_and_pagination(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    made = [
        await create(
            client,
            tenant_a,
            name="Alpha crawler",
            agent_type="crawler",
            owner="ops",
            deployment_env="production",
            email="alpha@example.com",
        ),
        await create(client, tenant_a, name="Beta writer", agent_type="writer", owner="ops"),
        await create(
            client, tenant_a, name="Gamma", description="writes 100% of the reports", agent_type="writer"
        ),
        await create(client, tenant_a, name="Delta_x", deployment_env="staging", owner="sales"),
        await create(client, tenant_a, name="Epsilon", deployment_env="production"),
    ]
    await create(client, tenant_b, name="Alpha of B", agent_type="crawler", owner="ops")
    ids = [agent["id"] for agent in made]
    suspended = await client.post(f"/v1/agents/{ids[1]}/suspend", headers=tenant_a.headers)
    assert suspended.status_code == 200

    async def names(**params: Any) -> list[str]:
        response = await client.get("/v1/agents", params=params, headers=tenant_a.headers)
        assert response.status_code == 200, response.text
        return [agent["name"] for agent in response.json()["agents"]]

    everything = await client.get("/v1/agents", headers=tenant_a.headers)
    body = everything.json()
    assert set(body) == {"agents", "total", "page", "limit"}
    assert (body["total"], body["page"], body["limit"]) == (5, 1, 20)
    # Newest first; tenant B's agent never shows.
    assert [agent["id"] for agent in body["agents"]] == ids[::-1]

    assert await names(status="suspended") == ["Beta writer"]
    assert sorted(await names(status="active")) == ["Alpha crawler", "Delta_x", "Epsilon", "Gamma"]
    assert await names(status="terminated") == []
    assert sorted(await names(agent_type="writer")) == ["Beta writer", "Gamma"]
    assert sorted(await names(owner="ops")) == ["Alpha crawler", "Beta writer"]
    assert sorted(await names(deployment_env="production")) == ["Alpha crawler", "Epsilon"]
    assert await names(deployment_env="production", owner="ops") == ["Alpha crawler"]
    # q: name, description, email or id, case-insensitive; LIKE wildcards are literal.
    assert await names(q="alpha") == ["Alpha crawler"]
    assert await names(q="ALPHA@EXAMPLE") == ["Alpha crawler"]
    assert await names(q="100%") == ["Gamma"]
    assert await names(q="a_x") == ["Delta_x"]
    assert await names(q="%") == ["Gamma"]
    assert await names(q="a%") == []
    assert await names(q="_") == ["Delta_x"]
    assert await names(q=ids[3]) == ["Delta_x"]
    assert await names(q=ids[3].upper()) == ["Delta_x"]
    assert await names(q=ids[4][:8]) == ["Epsilon"]
    assert await names(q="-") == []

    first = (await client.get("/v1/agents?limit=2", headers=tenant_a.headers)).json()
    third = (await client.get("/v1/agents?limit=2&page=3", headers=tenant_a.headers)).json()
    beyond = (await client.get("/v1/agents?limit=2&page=4", headers=tenant_a.headers)).json()
    assert (first["total"], first["page"], first["limit"], len(first["agents"])) == (5, 1, 2, 2)
    assert (third["page"], len(third["agents"])) == (3, 1)
    assert (beyond["total"], beyond["agents"]) == (5, [])
    pages = []
    for page in (1, 2, 3):
        response = await client.get(f"/v1/agents?limit=2&page={page}", headers=tenant_a.headers)
        pages += [agent["id"] for agent in response.json()["agents"]]
    assert pages == ids[::-1]

    for bad in ("limit=0", "limit=101", "page=0", "status=sleeping", "deployment_env=moon"):
        response = await client.get(f"/v1/agents?{bad}", headers=tenant_a.headers)
        assert_problem(response, 400, "VALIDATION_FAILED")


# -- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.0", "0.0.1", "10.20.30", "1.0.0-alpha", "1.0.0-rc.1+build.5"])
async def test_valid_semantic_versions(client: AsyncClient, tenant_a: TenantHandle, version: str) -> None:
    assert (await create(client, tenant_a, version=version))["version"] == version


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0+", "1.0.0-01", "latest", ""])
async def test_invalid_semantic_versions(client: AsyncClient, tenant_a: TenantHandle, version: str) -> None:
    response = await client.post(
        "/v1/agents", json={"name": "x", "version": version}, headers=tenant_a.headers
    )
    assert pointers(response) == {"/version"}
    agent = await create(client, tenant_a)
    patched = await client.patch(
        f"/v1/agents/{agent['id']}", json={"version": version}, headers=tenant_a.headers
    )
    assert pointers(patched) == {"/version"}


@pytest.mark.parametrize(
    ("capabilities", "pointer"),
    [
        ({"tools": ["web search"]}, "/capabilities/tools"),
        ({"tools": ["rm;-rf"]}, "/capabilities/tools"),
        ({"tools": [""]}, "/capabilities/tools"),
        ({"tools": ["x" * 101]}, "/capabilities/tools"),
        ({"domains": ["https://example.com"]}, "/capabilities/domains"),
        ({"domains": ["exa mple.com"]}, "/capabilities/domains"),
        ({"domains": ["*.*.example.com"]}, "/capabilities/domains"),
        ({"domains": ["example.*"]}, "/capabilities/domains"),
        ({"domains": ["-bad.example.com"]}, "/capabilities/domains"),
        ({"domains": ["example.com/path"]}, "/capabilities/domains"),
        ({"max_budget": -1}, "/capabilities/max_budget"),
        ({"shell": True}, "/capabilities/shell"),
    ],
)
async def test_invalid_capabilities_point_at_the_field(
    client: AsyncClient, tenant_a: TenantHandle, capabilities: dict[str, Any], pointer: str
) -> None:
    response = await client.post(
        "/v1/agents", json={"name": "x", "capabilities": capabilities}, headers=tenant_a.headers
    )
    assert pointers(response) == {pointer}
    agent = await create(client, tenant_a)
    patched = await client.patch(
        f"/v1/agents/{agent['id']}", json={"capabilities": capabilities}, headers=tenant_a.headers
    )
    assert pointers(patched) == {pointer}


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/name"),
        ({"name": ""}, "/name"),
        ({"name": "x", "email": "not-an-email"}, "/email"),
        ({"name": "x", "agent_type": "Has Spaces"}, "/agent_type"),
        ({"name": "x", "deployment_env": "moon"}, "/deployment_env"),
        ({"name": "x", "parent_id": "nope"}, "/parent_id"),
        ({"name": "x", "unknown": 1}, "/unknown"),
        ({"name": "x", "golden_thread": {"hash": "md5:abc", "ticket_id": "T-1"}}, "/golden_thread/hash"),
        ({"name": "x", "metadata": {"blob": "x" * 20_000}}, "/metadata"),
    ],
)
async def test_invalid_agent_bodies(
    client: AsyncClient, tenant_a: TenantHandle, body: dict[str, Any], pointer: str
) -> None:
    response = await client.post("/v1/agents", json=body, headers=tenant_a.headers)
    assert pointer in pointers(response)


async def test_valid_patterns(client: AsyncClient, tenant_a: TenantHandle) -> None:
    capabilities = {
        "tools": ["web_*", "db:query", "files/read", "tool-?", "*"],
        "domains": ["*", "*.example.com", "api.example.com", "localhost", "x-1.y"],
        "max_budget": 0,
    }
    body = await create(client, tenant_a, capabilities=capabilities)
    assert body["capabilities"] == {**capabilities, "max_budget": 0.0}


# -- email uniqueness -------------------------------------------------------------------------------------


async def test_email_is_unique_per_tenant_only(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    first = await create(client, tenant_a, email="ops-bot@example.com")
    again = await client.post(
        "/v1/agents", json={"name": "dup", "email": " OPS-Bot@Example.com"}, headers=tenant_a.headers
    )
    assert_problem(again, 409, "AGENT_EMAIL_TAKEN")
    registered = await client.post(
        "/v1/agents/register", json={"name": "dup", "email": "ops-bot@example.com"}, headers=tenant_a.headers
    )
    assert_problem(registered, 409, "AGENT_EMAIL_TAKEN")
    # Another tenant may use the same address; agents without an email never collide.
    assert (await create(client, tenant_b, email="ops-bot@example.com"))["email"] == "ops-bot@example.com"
    await create(client, tenant_a)
    await create(client, tenant_a)
    # Changing another agent's email to a taken one is refused too; keeping one's own is fine.
    other = await create(client, tenant_a, email="other@example.com")
    taken = await client.patch(
        f"/v1/agents/{other['id']}", json={"email": "ops-bot@example.com"}, headers=tenant_a.headers
    )
    assert_problem(taken, 409, "AGENT_EMAIL_TAKEN")
    same = await client.patch(
        f"/v1/agents/{first['id']}",
        json={"email": "ops-bot@example.com", "name": "renamed"},
        headers=tenant_a.headers,
    )
    assert same.status_code == 200, same.text
    listed = (await client.get("/v1/agents", headers=tenant_a.headers)).json()
    assert listed["total"] == 4


# -- update -----------------------------------------------------------------------------------------------


async def test_patch_changes_only_the_given_fields(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a, owner="ops", description="first", metadata={"a": 1})
    agent = reg["agent"]
    patch = {
        "name": "renamed",
        "description": None,
        "capabilities": {"tools": ["calc"], "domains": [], "max_budget": 1},
        "metadata": {"b": 2},
        "deployment_env": "production",
        "golden_thread": GOLDEN,
    }
    response = await client.patch(f"/v1/agents/{agent['id']}", json=patch, headers=tenant_a.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "renamed"
    assert body["description"] is None
    assert body["owner"] == "ops"
    assert body["version"] == agent["version"]
    assert body["metadata"] == {"b": 2}
    assert body["deployment_env"] == "production"
    assert body["capabilities"] == {"tools": ["calc"], "domains": [], "max_budget": 1.0}
    assert body["golden_thread"]["verified"] is True
    assert body["updated_at"] >= agent["updated_at"]
    assert body["created_at"] == agent["created_at"]
    assert (await client.get(f"/v1/agents/{agent['id']}", headers=tenant_a.headers)).json() == body
    # New tokens carry the new capabilities.
    claims = claims_of(await access_token(client, reg))
    assert claims["aigos:capabilities"] == {"tools": ["calc"], "domains": [], "max_budget": 1.0}
    assert claims["aigos:golden_thread"]["verified"] is True
    # An empty PATCH changes nothing.
    empty = await client.patch(f"/v1/agents/{agent['id']}", json={}, headers=tenant_a.headers)
    assert empty.status_code == 200
    assert {k: v for k, v in empty.json().items() if k != "updated_at"} == {
        k: v for k, v in body.items() if k != "updated_at"
    }


@pytest.mark.parametrize("field", ["name", "agent_type", "version", "deployment_env", "capabilities"])
async def test_patch_cannot_clear_required_fields(
    client: AsyncClient, tenant_a: TenantHandle, field: str
) -> None:
    reg = await register(client, tenant_a)
    response = await client.patch(
        f"/v1/agents/{reg['agent_id']}", json={field: None}, headers=tenant_a.headers
    )
    assert pointers(response) == {f"/{field}"}
    # The agent is intact and still gets tokens.
    got = (await client.get(f"/v1/agents/{reg['agent_id']}", headers=tenant_a.headers)).json()
    assert got["name"] == "bot"
    assert got["capabilities"] == CAPABILITIES
    await access_token(client, reg)


async def test_patch_refuses_immutable_fields_and_unknown_agents(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    agent = await create(client, tenant_a)
    for field, value in (("status", "active"), ("parent_id", str(uuid.uuid4())), ("id", str(uuid.uuid4()))):
        response = await client.patch(
            f"/v1/agents/{agent['id']}", json={field: value}, headers=tenant_a.headers
        )
        assert pointers(response) == {f"/{field}"}
    missing = await client.patch(f"/v1/agents/{uuid.uuid4()}", json={"name": "x"}, headers=tenant_a.headers)
    assert_problem(missing, 404, "AGENT_NOT_FOUND")


# -- lifecycle --------------------------------------------------------------------------------------------


async def test_suspend_refuses_tokens_until_reactivated(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    watcher = await register(client, tenant_a, name="watcher")
    agent_id, token = reg["agent_id"], await access_token(client, reg)
    assert (await heartbeat(client, agent_id, token)).status_code == 200

    suspended = await client.post(
        f"/v1/agents/{agent_id}/suspend", json={"reason": "investigating"}, headers=tenant_a.headers
    )
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["status"] == "suspended"
    for used in (token, reg["identity_token"]):
        refused = await heartbeat(client, agent_id, used)
        assert_problem(refused, 401, "AGENT_SUSPENDED")
        assert refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    denied = await client_token(client, reg["client_id"], reg["client_secret"])
    assert denied.status_code == 401, denied.text
    assert denied.json()["error"] == "invalid_client"
    assert denied.headers["WWW-Authenticate"].startswith("Basic")
    seen = await client.post(
        "/oauth2/introspect", data={"token": token}, auth=(watcher["client_id"], watcher["client_secret"])
    )
    assert seen.json() == {"active": False}
    # Suspending again changes nothing.
    again = await client.post(f"/v1/agents/{agent_id}/suspend", headers=tenant_a.headers)
    assert again.status_code == 200
    assert again.json()["status"] == "suspended"

    reactivated = await client.post(f"/v1/agents/{agent_id}/reactivate", headers=tenant_a.headers)
    assert reactivated.status_code == 200, reactivated.text
    assert reactivated.json()["status"] == "active"
    assert (await heartbeat(client, agent_id, token)).status_code == 200
    assert (await client_token(client, reg["client_id"], reg["client_secret"])).status_code == 200
    seen = await client.post(
        "/oauth2/introspect", data={"token": token}, auth=(watcher["client_id"], watcher["client_secret"])
    )
    assert seen.json()["active"] is True
    # Reactivating an active agent is a no-op.
    assert (
        await client.post(f"/v1/agents/{agent_id}/reactivate", headers=tenant_a.headers)
    ).status_code == 200


async def test_deregister_terminates_revokes_and_keeps_the_record(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    agent_id = reg["agent_id"]
    extra = await client.post(
        f"/v1/agents/{agent_id}/credentials", json={"name": "second"}, headers=tenant_a.headers
    )
    assert extra.status_code == 201
    token = await access_token(client, reg)

    deleted = await client.delete(f"/v1/agents/{agent_id}", headers=tenant_a.headers)
    assert deleted.status_code == 204
    assert deleted.content == b""

    record = await client.get(f"/v1/agents/{agent_id}", headers=tenant_a.headers)
    assert record.status_code == 200
    assert record.json()["status"] == "terminated"
    assert record.json()["name"] == "bot"
    listed = (await client.get("/v1/agents?status=terminated", headers=tenant_a.headers)).json()
    assert [agent["id"] for agent in listed["agents"]] == [agent_id]

    creds = (await client.get(f"/v1/agents/{agent_id}/credentials", headers=tenant_a.headers)).json()
    assert len(creds) == 2
    assert {cred["status"] for cred in creds} == {"revoked"}
    for secret in (reg["client_secret"], extra.json()["client_secret"]):
        refused = await client_token(client, reg["client_id"], secret)
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_client"
    assert_problem(await heartbeat(client, agent_id, token), 401, "AGENT_TERMINATED")

    # Terminated is final here: no way back, no changes, no new credentials; deregistering again is a no-op.
    for action in ("reactivate", "suspend"):
        response = await client.post(f"/v1/agents/{agent_id}/{action}", headers=tenant_a.headers)
        body = assert_problem(response, 409, "INVALID_STATUS_TRANSITION")
        assert body["current"] == "terminated"
    assert_problem(
        await client.patch(f"/v1/agents/{agent_id}", json={"name": "zombie"}, headers=tenant_a.headers),
        409,
        "AGENT_NOT_MODIFIABLE",
    )
    assert_problem(
        await client.post(f"/v1/agents/{agent_id}/credentials", json={}, headers=tenant_a.headers),
        409,
        "AGENT_NOT_MODIFIABLE",
    )
    assert (await client.delete(f"/v1/agents/{agent_id}", headers=tenant_a.headers)).status_code == 204
    assert_problem(
        await client.delete(f"/v1/agents/{uuid.uuid4()}", headers=tenant_a.headers), 404, "AGENT_NOT_FOUND"
    )


async def test_suspended_agent_can_be_deregistered(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agent = await create(client, tenant_a)
    assert (
        await client.post(f"/v1/agents/{agent['id']}/suspend", headers=tenant_a.headers)
    ).status_code == 200
    assert (await client.delete(f"/v1/agents/{agent['id']}", headers=tenant_a.headers)).status_code == 204
    got = (await client.get(f"/v1/agents/{agent['id']}", headers=tenant_a.headers)).json()
    assert got["status"] == "terminated"


# -- plan limit -------------------------------------------------------------------------------------------


async def test_free_plan_allows_ten_agents_and_terminated_ones_do_not_count(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    agents = [await create(client, tenant_a, name=f"a{n}") for n in range(9)]
    agents.append(await register(client, tenant_a, name="a9"))
    eleventh = await client.post("/v1/agents", json={"name": "a10"}, headers=tenant_a.headers)
    body = assert_problem(eleventh, 403, "PLAN_LIMIT_EXCEEDED")
    assert body["limit"] == 10
    assert body["resource"] == "agents"
    assert_problem(
        await client.post("/v1/agents/register", json={"name": "a10"}, headers=tenant_a.headers),
        403,
        "PLAN_LIMIT_EXCEEDED",
    )
    # Suspended agents still count; another tenant has its own allowance.
    assert (
        await client.post(f"/v1/agents/{agents[0]['id']}/suspend", headers=tenant_a.headers)
    ).status_code == 200
    assert (
        await client.post("/v1/agents", json={"name": "a10"}, headers=tenant_a.headers)
    ).status_code == 403
    await create(client, tenant_b)
    # A terminated agent frees its place.
    assert (await client.delete(f"/v1/agents/{agents[1]['id']}", headers=tenant_a.headers)).status_code == 204
    await create(client, tenant_a, name="a10")
    assert (
        await client.post("/v1/agents", json={"name": "a11"}, headers=tenant_a.headers)
    ).status_code == 403
    assert (await client.get("/v1/agents", headers=tenant_a.headers)).json()["total"] == 11


# -- lineage ----------------------------------------------------------------------------------------------


async def test_lineage_depth_and_limit(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    # A root that holds everything, so every child is within it.
    root = await register(client, tenant_a, name="root", capabilities={"tools": ["*"], "domains": ["*"]})
    chain = [root["agent"]]
    for depth in range(1, 6):  # the default max_lineage_depth is 5
        child = await create(client, tenant_a, name=f"depth-{depth}", parent_id=chain[-1]["id"])
        assert child["lineage"] == {"parent_id": chain[-1]["id"], "depth": depth}
        chain.append(child)
    too_deep = await client.post(
        "/v1/agents", json={"name": "depth-6", "parent_id": chain[-1]["id"]}, headers=tenant_a.headers
    )
    body = assert_problem(too_deep, 403, "DEPTH_EXCEEDED")
    assert body["limit"] == 5
    # Siblings share the depth; parents must exist in the caller's tenant.
    sibling = await create(client, tenant_a, name="sibling", parent_id=root["agent_id"])
    assert sibling["lineage"]["depth"] == 1
    foreign = await create(client, tenant_b, name="foreign")
    for parent in (foreign["id"], str(uuid.uuid4())):
        response = await client.post(
            "/v1/agents", json={"name": "orphan", "parent_id": parent}, headers=tenant_a.headers
        )
        assert_problem(response, 404, "AGENT_NOT_FOUND")
    # The child's token carries its lineage; a root's has none.
    child_reg = await register(client, tenant_a, name="child", parent_id=root["agent_id"])
    assert claims_of(child_reg["identity_token"])["aigos:lineage"] == {
        "parent_id": root["agent_id"],
        "depth": 1,
    }
    assert "aigos:lineage" not in claims_of(root["identity_token"])


async def test_lineage_limit_follows_the_setting(tmp_path: Any) -> None:
    from asgi_lifespan import LifespanManager
    from httpx import ASGITransport

    from aigos.server.app import create_app
    from tests.conftest import embedded_settings

    app = create_app(embedded_settings(tmp_path / "data", max_lineage_depth=1))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as http,
    ):
        tenant = await signup(http, "Shallow")
        root = await create(http, tenant, name="root")
        child = await create(http, tenant, name="child", parent_id=root["id"])
        grandchild = await http.post(
            "/v1/agents", json={"name": "grandchild", "parent_id": child["id"]}, headers=tenant.headers
        )
        assert assert_problem(grandchild, 403, "DEPTH_EXCEEDED")["limit"] == 1


@pytest.mark.parametrize(
    ("capabilities", "problem"),
    [
        ({"tools": ["shell"], "max_budget": 10}, "tool 'shell'"),
        ({"tools": ["*"], "max_budget": 10}, "tool '*'"),
        ({"domains": ["example.com"], "max_budget": 10}, "domain 'example.com'"),
        ({"max_budget": 100.5}, "max_budget"),
        ({"tools": ["calc"]}, "max_budget"),
    ],
)
async def test_a_child_is_contained_in_its_parent(
    client: AsyncClient, tenant_a: TenantHandle, capabilities: dict[str, Any], problem: str
) -> None:
    parent = await register(client, tenant_a, name="parent")  # CAPABILITIES
    for route in ("/v1/agents", "/v1/agents/register"):
        response = await client.post(
            route,
            json={"name": "child", "parent_id": parent["agent_id"], "capabilities": capabilities},
            headers=tenant_a.headers,
        )
        body = assert_problem(response, 403, "PRIVILEGE_ESCALATION")
        assert body["parent_id"] == parent["agent_id"]
        assert any(problem in item for item in body["exceeding"]), body
    # Nothing was registered.
    assert (await client.get("/v1/agents", headers=tenant_a.headers)).json()["total"] == 1
    # Within the parent, and then widened past it: refused at update too, the agent unchanged.
    child = await create(
        client, tenant_a, name="child", parent_id=parent["agent_id"], capabilities={"max_budget": 1}
    )
    widened = await client.patch(
        f"/v1/agents/{child['id']}", json={"capabilities": capabilities}, headers=tenant_a.headers
    )
    assert_problem(widened, 403, "PRIVILEGE_ESCALATION")
    stored = await client.get(f"/v1/agents/{child['id']}", headers=tenant_a.headers)
    assert stored.json()["capabilities"] == {"tools": [], "domains": [], "max_budget": 1.0}
    # A root agent may hold anything.
    root = await create(client, tenant_a, name="root", capabilities=capabilities)
    assert root["capabilities"]["tools"] == capabilities.get("tools", [])


async def test_a_parent_cannot_shrink_below_its_children(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent = await register(client, tenant_a, name="parent")  # CAPABILITIES
    child = await create(
        client,
        tenant_a,
        name="child",
        parent_id=parent["agent_id"],
        capabilities={"tools": ["web_search"], "domains": ["api.example.com"], "max_budget": 10},
    )
    narrowed = {"tools": ["calc"], "domains": ["*.example.com"], "max_budget": 100}
    url = f"/v1/agents/{parent['agent_id']}"
    response = await client.patch(url, json={"capabilities": narrowed}, headers=tenant_a.headers)
    body = assert_problem(response, 409, "CHILD_EXCEEDS_CAPABILITIES")
    assert body["child_id"] == child["id"]
    assert body["exceeding"] == ["tool 'web_search'"]
    # Other changes to the parent, and narrowing that still covers the child, are fine.
    assert (await client.patch(url, json={"name": "renamed"}, headers=tenant_a.headers)).status_code == 200
    still = {"tools": ["web_search"], "domains": ["api.example.com"], "max_budget": 10}
    assert (
        await client.patch(url, json={"capabilities": still}, headers=tenant_a.headers)
    ).status_code == 200
    # A deregistered child holds nothing any more.
    assert (await client.delete(f"/v1/agents/{child['id']}", headers=tenant_a.headers)).status_code == 204
    assert (
        await client.patch(url, json={"capabilities": narrowed}, headers=tenant_a.headers)
    ).status_code == 200


# -- liveness ---------------------------------------------------------------------------------------------


async def test_heartbeat_makes_the_agent_online(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    other = await create(client, tenant_a, name="other")
    beat = await heartbeat(client, reg["agent_id"], reg["identity_token"])
    assert beat.status_code == 200, beat.text
    assert beat.json()["agent_id"] == reg["agent_id"]
    assert beat.json()["status"] == "active"
    assert "server_time" in beat.json()
    got = (await client.get(f"/v1/agents/{reg['agent_id']}", headers=tenant_a.headers)).json()
    assert got["liveness"] == "online"
    assert got["last_seen_at"] is not None
    listed = (await client.get("/v1/agents", headers=tenant_a.headers)).json()["agents"]
    assert {agent["name"]: agent["liveness"] for agent in listed} == {"bot": "online", "other": "offline"}
    # An agent beats only for itself.
    for target in (other["id"], str(uuid.uuid4())):
        assert_problem(await heartbeat(client, target, reg["identity_token"]), 404, "AGENT_NOT_FOUND")


# -- Golden Thread ----------------------------------------------------------------------------------------


async def test_golden_thread_is_verified(client: AsyncClient, tenant_a: TenantHandle) -> None:
    await uploaded(client, tenant_a, "aigrc-2025-000f1001")
    reg = await register(client, tenant_a, golden_thread=GOLDEN, asset_card_id="aigrc-2025-000f1001")
    thread = reg["agent"]["golden_thread"]
    assert thread["verified"] is True
    assert thread["hash"] == GOLDEN["hash"]
    assert thread["ticket_id"] == "FIN-1234"
    assert claims_of(reg["identity_token"])["aigos:golden_thread"] == {
        "hash": GOLDEN["hash"],
        "ticket_id": "FIN-1234",
        "verified": True,
    }
    # The same approval written differently still verifies (the spec normalises it).
    variant = {**GOLDEN, "approved_by": "CISO@corp.com", "approved_at": "2025-01-15T10:30:00+00:00"}
    assert (await create(client, tenant_a, golden_thread=variant))["golden_thread"]["verified"] is True


@pytest.mark.parametrize(
    "change",
    [
        {"approved_by": "cfo@corp.com"},
        {"approved_at": "2025-01-15T10:30:01Z"},
        {"ticket_id": "FIN-1235"},
        {"hash": "sha256:" + "0" * 64},
        {"approved_at": "not a time"},
        {"approved_by": None, "approved_at": None},
    ],
)
async def test_golden_thread_mismatch_is_not_verified(
    client: AsyncClient, tenant_a: TenantHandle, change: dict[str, Any]
) -> None:
    reg = await register(client, tenant_a, golden_thread={**GOLDEN, **change})
    assert reg["agent"]["golden_thread"]["verified"] is False
    assert claims_of(reg["identity_token"])["aigos:golden_thread"]["verified"] is False


# -- audit ------------------------------------------------------------------------------------------------


async def test_registry_changes_are_audited(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    agent_id = reg["agent_id"]
    headers = tenant_a.headers
    creds = (await client.get(f"/v1/agents/{agent_id}/credentials", headers=headers)).json()
    assert (
        await client.patch(f"/v1/agents/{agent_id}", json={"owner": "x"}, headers=headers)
    ).status_code == 200
    assert (
        await client.post(f"/v1/agents/{agent_id}/suspend", json={"reason": "why"}, headers=headers)
    ).status_code == 200
    assert (await client.post(f"/v1/agents/{agent_id}/reactivate", headers=headers)).status_code == 200
    added = await client.post(f"/v1/agents/{agent_id}/credentials", json={}, headers=headers)
    rotated = await client.post(
        f"/v1/agents/{agent_id}/credentials/{creds[0]['id']}/rotate",
        json={"grace_seconds": 0},
        headers=headers,
    )
    assert rotated.status_code == 201, rotated.text
    revoked = await client.delete(f"/v1/agents/{agent_id}/credentials/{added.json()['id']}", headers=headers)
    assert revoked.status_code == 204
    assert (await client.delete(f"/v1/agents/{agent_id}", headers=headers)).status_code == 204

    events = await agent_events(client, tenant_a)
    assert [event["event_type"] for event in reversed(events)] == [
        "agent.registered",
        "agent.updated",
        "agent.suspended",
        "agent.reactivated",
        "agent.credential_created",
        "agent.credential_rotated",
        "agent.credential_revoked",
        "agent.deregistered",
    ]
    assert {event["agent_id"] for event in events} == {agent_id}
    assert {event["actor"]["type"] for event in events} == {"api_key"}
    by_type = {event["event_type"]: event["data"] for event in events}
    assert by_type["agent.suspended"] == {"from": "active", "to": "suspended", "reason": "why"}
    assert by_type["agent.deregistered"]["to"] == "terminated"
    assert by_type["agent.updated"] == {"fields": ["owner"]}
    assert by_type["agent.credential_rotated"]["grace_seconds"] == 0
    # Refused requests leave no trace.
    await client.post(f"/v1/agents/{agent_id}/reactivate", headers=headers)
    assert len(await agent_events(client, tenant_a)) == len(events)


async def test_token_traffic_is_audited(client: AsyncClient, app: Any, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    await access_token(client, reg)
    refused = await client_token(client, reg["client_id"], "aigos_cs_wrong")
    assert refused.status_code == 401
    # Token events are buffered so that issuance never waits for the log: flush, and allow the background
    # writer to finish a batch it may have taken just before.
    wanted = {"agent.token_issued", "agent.authentication_failed"}
    events: list[dict[str, Any]] = []
    for _ in range(50):
        await app.state.runtime.events.flush(everything=True)
        events = await agent_events(client, tenant_a)
        if wanted <= {event["event_type"] for event in events}:
            break
        await asyncio.sleep(0.1)
    assert wanted <= {event["event_type"] for event in events}, events
    issued = next(event for event in events if event["event_type"] == "agent.token_issued")
    assert issued["data"]["method"] == "client_secret_basic"
    assert issued["actor"]["type"] == "agent"
    failed = next(event for event in events if event["event_type"] == "agent.authentication_failed")
    assert failed["outcome"] == "failure"
    assert failed["data"]["error"] == "invalid_client"
    assert "aigos_cs_wrong" not in str(failed)
