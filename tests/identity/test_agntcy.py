"""AGNTCY alignment: agents exported as signed OASF records and registered from them."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient
from joserfc import jws
from joserfc.jwk import KeySet

from aigos.core.canonical import canonical
from aigos.server.identity import agntcy
from tests.aigrc.cards import uploaded
from tests.helpers import TenantHandle

AGENT = {
    "name": "Research assistant",
    "version": "2.1.0",
    "description": "Finds and summarises papers.",
    "owner": "research-team@example.com",
    "agent_type": "research",
    "deployment_env": "staging",
    "capabilities": {"tools": ["web_search", "pdf_*"], "domains": ["*.arxiv.org"], "max_budget": 25.5},
    "asset_card_id": "aigrc-2025-00000042",
}


async def create(client: AsyncClient, tenant: TenantHandle, **overrides: Any) -> dict[str, Any]:
    """An agent created through the registry (against its asset card, uploaded first)."""
    await uploaded(client, tenant, AGENT["asset_card_id"])
    response = await client.post("/v1/agents", json={**AGENT, **overrides}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def export(client: AsyncClient, tenant: TenantHandle, agent_id: str) -> dict[str, Any]:
    """The agent's signed OASF record."""
    response = await client.get(f"/v1/agents/{agent_id}/oasf", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_export_maps_the_agent(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agent = await create(client, tenant_a)
    record = (await export(client, tenant_a, agent["id"]))["record"]
    assert record["schema_version"] == agntcy.SCHEMA_VERSION
    assert (record["name"], record["version"], record["description"]) == (
        AGENT["name"],
        AGENT["version"],
        AGENT["description"],
    )
    assert record["authors"] == [AGENT["owner"]]
    assert record["skills"] == [{"name": "web_search"}, {"name": "pdf_*"}]
    assert record["created_at"].endswith("Z")
    notes = record["annotations"]
    assert all(isinstance(value, str) for value in notes.values())
    assert notes["aigos.agent_id"] == agent["id"]
    assert notes["aigos.tenant_id"] == tenant_a.id
    assert notes["aigos.agent_type"] == "research"
    assert notes["aigos.deployment_env"] == "staging"
    assert notes["aigos.status"] == "active"
    assert notes["aigos.domains"] == "*.arxiv.org"
    assert notes["aigos.max_budget"] == "25.5"
    assert notes["aigos.jwks_uri"] == "http://testserver/.well-known/jwks.json"


async def test_round_trip_keeps_the_description_and_capabilities(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    original = await create(client, tenant_a)
    record = (await export(client, tenant_a, original["id"]))["record"]
    record["annotations"]["team"] = "research"  # someone else's annotation travels along
    imported = await client.post("/v1/agents/import/oasf", json=record, headers=tenant_a.headers)
    assert imported.status_code == 201, imported.text
    copy = imported.json()
    assert copy["id"] != original["id"]
    for field in ("name", "version", "description", "owner", "agent_type", "deployment_env", "capabilities"):
        assert copy[field] == original[field], field
    assert copy["asset_card_id"] == "aigrc-2025-00000042"
    assert copy["status"] == "active"
    again = (await export(client, tenant_a, copy["id"]))["record"]
    assert again["annotations"]["team"] == "research"
    assert again["skills"] == record["skills"]


async def test_a_foreign_oasf_record_is_imported(client: AsyncClient, tenant_a: TenantHandle) -> None:
    record = {
        "name": "directory.agntcy.org/example/research-assistant-v4",
        "version": "v4.0.0",
        "schema_version": "0.7.0",
        "description": "AI research assistant.",
        "authors": ["AGNTCY Contributors", "Someone Else"],
        "created_at": "2025-03-19T17:06:37Z",
        "annotations": {"key": "value", "aigos.status": "terminated", "aigos.tenant_id": "nope"},
        "skills": [{"name": "natural_language_processing/analytical_reasoning/problem_solving", "id": 10702}],
        "locators": [{"type": "docker_image", "url": "https://ghcr.io/agntcy/research-assistant"}],
        "domains": [{"name": "life_science/biotechnology", "id": 301}],
        "modules": [{"name": "runtime/framework", "data": {"name": "crewai"}}],
    }
    response = await client.post("/v1/agents/import/oasf", json=record, headers=tenant_a.headers)
    assert response.status_code == 201, response.text
    agent = response.json()
    assert agent["version"] == "4.0.0"
    assert agent["owner"] == "AGNTCY Contributors"
    assert agent["status"] == "active"
    assert agent["tenant_id"] == tenant_a.id
    assert agent["capabilities"]["tools"] == [record["skills"][0]["name"]]  # type: ignore[index]
    assert agent["metadata"] == {"oasf": {"schema_version": "0.7.0", "annotations": {"key": "value"}}}


async def test_an_invalid_record_is_refused_naming_its_field(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    bad = {"name": "x", "version": "1.0", "skills": [{"name": "no spaces allowed"}]}
    response = await client.post("/v1/agents/import/oasf", json=bad, headers=tenant_a.headers)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "VALIDATION_FAILED"
    pointers = {error["pointer"] for error in response.json()["errors"]}
    assert pointers == {"/version", "/skills"}
    assert "no spaces allowed" in response.text
    budget = {"name": "x", "version": "1.0.0", "annotations": {"aigos.max_budget": "lots"}}
    response = await client.post("/v1/agents/import/oasf", json=budget, headers=tenant_a.headers)
    assert response.json()["errors"][0]["pointer"] == "/annotations/aigos.max_budget"


async def test_the_signature_verifies_against_the_jwks(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agent = await create(client, tenant_a)
    signed = await export(client, tenant_a, agent["id"])
    jwks = (await client.get("/.well-known/jwks.json")).json()
    verified = jws.deserialize_compact(signed["signature"], KeySet.import_key_set(jwks), algorithms=["ES256"])
    header = verified.headers()
    assert header["kid"] in {key["kid"] for key in jwks["keys"]}
    assert header["typ"] == agntcy.SIGNATURE_TYPE
    assert verified.payload == canonical(signed["record"])
    assert agntcy.verify_record(signed["record"], signed["signature"], jwks)
    tampered = {**signed["record"], "name": "Someone else"}
    assert not agntcy.verify_record(tampered, signed["signature"], jwks)


async def test_another_tenants_agent_is_not_found(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    agent = await create(client, tenant_b)
    response = await client.get(f"/v1/agents/{agent['id']}/oasf", headers=tenant_a.headers)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "AGENT_NOT_FOUND"
    assert AGENT["name"] not in response.text
