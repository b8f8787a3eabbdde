"""The AIGRC bridge over the API, on both backends: asset cards uploaded and versioned, agents registered
against them (bounded by them, carrying their Golden Thread), narrowed when a card narrows, and the Golden
Thread verified for tools and CI."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient, Response

from tests.aigrc.cards import SPEC_HASH, card, upload
from tests.helpers import TenantHandle
from tests.identity.helpers import access_token, assert_problem, claims_of


async def register(client: AsyncClient, tenant: TenantHandle, **spec: Any) -> Response:
    body = {"name": "triage", "asset_card_id": "aigrc-2025-0a1b2c3d", **spec}
    return await client.post("/v1/agents/register", json=body, headers=tenant.headers)


async def test_a_card_is_saved_by_its_id_versioned_and_read_back(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    created = await upload(client, tenant_a, card())
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["id"], body["change"], body["version"], body["source"]) == (
        "aigrc-2025-0a1b2c3d",
        "created",
        1,
        "api",
    )
    assert body["card_version"] == "1.10"  # YAML's 1.10 stays the card's text, not the float 1.1
    assert body["risk_level"] == "limited"
    assert body["golden_thread"] == {
        "hash": SPEC_HASH,
        "ticket_id": "FIN-1234",
        "verified": True,
        "form": "spec",
    }
    assert body["document"]["x-team-notes"] == {"kept": [1, 2]}  # unknown fields kept
    assert body["document"]["created"] == "2025-01-15T10:30:00Z"
    assert body["content_hash"].startswith("sha256:")

    again = await upload(client, tenant_a, card())
    assert again.status_code == 200
    assert (again.json()["change"], again.json()["version"]) == ("unchanged", 1)
    # The same card as JSON is the same content: unchanged too.
    as_json = await client.post("/v1/aigrc/asset-cards", json=body["document"], headers=tenant_a.headers)
    assert (as_json.status_code, as_json.json()["change"]) == (200, "unchanged")

    changed = await upload(client, tenant_a, card(**{"riskLevel: limited": "riskLevel: high"}))
    assert changed.status_code == 200, changed.text
    assert (changed.json()["change"], changed.json()["version"], changed.json()["risk_level"]) == (
        "updated",
        2,
        "high",
    )
    listed = await client.get("/v1/aigrc/asset-cards", headers=tenant_a.headers)
    assert listed.status_code == 200
    assert [c["id"] for c in listed.json()["data"]] == ["aigrc-2025-0a1b2c3d"]
    assert "document" not in listed.json()["data"][0]
    high = await client.get("/v1/aigrc/asset-cards", params={"risk_level": "high"}, headers=tenant_a.headers)
    assert high.json()["total"] == 1
    one = await client.get("/v1/aigrc/asset-cards/aigrc-2025-0a1b2c3d", headers=tenant_a.headers)
    assert one.json()["document"]["classification"]["riskLevel"] == "high"
    versions = await client.get(
        "/v1/aigrc/asset-cards/aigrc-2025-0a1b2c3d/versions", headers=tenant_a.headers
    )
    assert [(v["version"], v["document"]["classification"]["riskLevel"]) for v in versions.json()] == [
        (2, "high"),
        (1, "limited"),
    ]
    events = await client.get(
        "/v1/audit/events", params={"event_type": "asset_card.*"}, headers=tenant_a.headers
    )
    assert [e["event_type"] for e in events.json()["data"]] == ["asset_card.updated", "asset_card.created"]

    # Another tenant sees none of it.
    assert_problem(
        await client.get("/v1/aigrc/asset-cards/aigrc-2025-0a1b2c3d", headers=tenant_b.headers),
        404,
        "ASSET_CARD_NOT_FOUND",
    )
    assert (await client.get("/v1/aigrc/asset-cards", headers=tenant_b.headers)).json()["total"] == 0
    assert_problem(await register(client, tenant_b), 400, "ASSET_CARD_NOT_FOUND")


async def test_malformed_cards_are_refused_naming_each_field(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    bad = card(**{"id: aigrc-2025-0a1b2c3d": "id: card-1", "riskLevel: limited": "riskLevel: extreme"})
    refused = await upload(
        client, tenant_a, bad.replace("created: 2025-01-15T10:30:00Z", "created: 2025-01-15T10:30:00+02:00")
    )
    body = assert_problem(refused, 400, "VALIDATION_FAILED")
    assert {"/id", "/classification/riskLevel", "/created"} <= {e["pointer"] for e in body["errors"]}
    assert_problem(await upload(client, tenant_a, "id: [unclosed"), 400, "VALIDATION_FAILED")
    assert_problem(await upload(client, tenant_a, "- a\n- b\n"), 400, "VALIDATION_FAILED")
    text = await client.post(
        "/v1/aigrc/asset-cards", content=card(), headers={**tenant_a.headers, "Content-Type": "text/plain"}
    )
    assert_problem(text, 415, "UNSUPPORTED_MEDIA_TYPE")
    huge = card() + "x-pad: '" + "a" * 300_000 + "'\n"
    assert_problem(await upload(client, tenant_a, huge), 413, "PAYLOAD_TOO_LARGE")
    nul = card(**{"name: Support triage agent": 'name: "Support\\0agent"'})
    refused_nul = assert_problem(await upload(client, tenant_a, nul), 400, "VALIDATION_FAILED")
    assert refused_nul["errors"][0]["pointer"] == "/name"
    assert (await client.get("/v1/aigrc/asset-cards", headers=tenant_a.headers)).json()["total"] == 0


async def test_an_agent_registers_within_its_card_and_carries_its_golden_thread(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    assert (await upload(client, tenant_a, card())).status_code == 201
    within = await register(
        client, tenant_a, capabilities={"tools": ["web_search"], "domains": ["api.corp.com"]}
    )
    assert within.status_code == 201, within.text
    agent = within.json()
    read = await client.get(f"/v1/agents/{agent['agent_id']}", headers=tenant_a.headers)
    assert read.json()["asset_card_id"] == "aigrc-2025-0a1b2c3d"
    claims = claims_of(await access_token(client, agent))
    assert claims["aigos:golden_thread"] == {"hash": SPEC_HASH, "ticket_id": "FIN-1234", "verified": True}
    assert claims["aigos:capabilities"]["tools"] == ["web_search"]

    # Asking for nothing gives the card's capabilities.
    default = await register(client, tenant_a, name="defaults")
    assert default.status_code == 201, default.text
    given = await client.get(f"/v1/agents/{default.json()['agent_id']}", headers=tenant_a.headers)
    assert given.json()["capabilities"] == {
        "tools": ["web_*", "ticket_read"],
        "domains": ["*.corp.com"],
        "max_budget": 50.0,
    }

    beyond = await register(
        client, tenant_a, capabilities={"tools": ["shell"], "domains": ["evil.org"], "max_budget": 500}
    )
    body = assert_problem(beyond, 403, "EXCEEDS_ASSET_CARD")
    assert body["exceeding"] == ["tool 'shell'", "domain 'evil.org'", "max_budget 500.0 above 50.0"]

    # A change of capabilities is held to the card as well.
    update = await client.patch(
        f"/v1/agents/{agent['agent_id']}",
        json={"capabilities": {"tools": ["shell"]}},
        headers=tenant_a.headers,
    )
    assert_problem(update, 403, "EXCEEDS_ASSET_CARD")


async def test_a_card_that_may_not_run_or_whose_thread_fails_refuses_registration(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    wrong = "sha256:" + "0" * 64
    assert (await upload(client, tenant_a, card(hash=wrong))).status_code == 201
    # SANDBOX (the default): registered, marked unverified in its token.
    sandboxed = await register(client, tenant_a)
    assert sandboxed.status_code == 201, sandboxed.text
    claims = claims_of(await access_token(client, sandboxed.json()))
    assert claims["aigos:golden_thread"]["verified"] is False
    # FAIL: refused.
    assert (await upload(client, tenant_a, card(hash=wrong, mode="FAIL"))).status_code == 200
    assert_problem(await register(client, tenant_a), 403, "GOLDEN_THREAD_UNVERIFIED")
    # The tenant may require verified threads of every agent, with or without a card.
    assert (await upload(client, tenant_a, card(hash=wrong))).status_code == 200
    required = await client.put(
        f"/v1/tenants/{tenant_a.id}",
        json={"settings": {"require_verified_golden_thread": True}},
        headers=tenant_a.headers,
    )
    assert required.status_code == 200, required.text
    assert_problem(await register(client, tenant_a), 403, "GOLDEN_THREAD_UNVERIFIED")
    plain = await client.post("/v1/agents/register", json={"name": "plain"}, headers=tenant_a.headers)
    assert_problem(plain, 403, "GOLDEN_THREAD_UNVERIFIED")
    assert (await upload(client, tenant_a, card())).status_code == 200
    assert (await register(client, tenant_a)).status_code == 201

    for change, code in (
        ({"status: approved": "status: revoked"}, "ASSET_CARD_NOT_ACTIVE"),
        ({"riskLevel: limited": "riskLevel: unacceptable"}, "ASSET_CARD_PROHIBITED"),
    ):
        assert (await upload(client, tenant_a, card(**change))).status_code == 200
        assert_problem(await register(client, tenant_a), 403, code)


async def test_a_narrower_card_narrows_its_live_agents(client: AsyncClient, tenant_a: TenantHandle) -> None:
    assert (await upload(client, tenant_a, card())).status_code == 201
    agent = (await register(client, tenant_a, capabilities={"tools": ["web_*", "ticket_read"]})).json()
    other = await client.post(
        "/v1/agents/register",
        json={"name": "unbound", "capabilities": {"tools": ["web_*"]}},
        headers=tenant_a.headers,
    )
    assert other.status_code == 201

    bearer = {"Authorization": f"Bearer {agent['identity_token']}"}
    fetch = {"action": "tool.call", "resource": "web_fetch", "context": {"tool": "web_fetch"}}
    before = await client.post("/v1/policies/check", json=fetch, headers=bearer)
    assert before.json()["allowed"] is True

    narrowed = await upload(client, tenant_a, card(tools="web_search"))
    assert narrowed.json()["change"] == "updated"
    # The token the agent already holds still says web_*: the next check is held to the card all the same.
    after = await client.post("/v1/policies/check", json=fetch, headers=bearer)
    assert (after.json()["allowed"], after.json()["code"]) == (False, "CAPABILITY_DENIED")
    # A simulation shows the card's bounds in its trace, before the capability stage.
    simulated = await client.post(
        "/v1/policies/simulate",
        json={"agent_id": agent["agent_id"], "request": fetch},
        headers=tenant_a.headers,
    )
    assert simulated.status_code == 200, simulated.text
    stages = [(step["stage"], step["result"]) for step in simulated.json()["trace"]]
    assert stages[:3] == [("kill_switch", "pass"), ("asset_card", "deny"), ("capability", "deny")]
    assert "aigrc-2025-0a1b2c3d (version 2)" in simulated.json()["trace"][1]["detail"]
    read = await client.get(f"/v1/agents/{agent['agent_id']}", headers=tenant_a.headers)
    assert read.json()["capabilities"]["tools"] == ["web_search"]
    claims = claims_of(await access_token(client, agent))
    assert claims["aigos:capabilities"]["tools"] == ["web_search"]
    # An agent not registered against the card is left alone.
    unbound = await client.get(f"/v1/agents/{other.json()['agent_id']}", headers=tenant_a.headers)
    assert unbound.json()["capabilities"]["tools"] == ["web_*"]
    events = await client.get(
        "/v1/audit/events", params={"event_type": "asset_card.agents_narrowed"}, headers=tenant_a.headers
    )
    assert events.json()["data"][0]["data"]["agents"] == 1


async def test_golden_thread_verification_for_tools(client: AsyncClient, tenant_a: TenantHandle) -> None:
    url = "/v1/aigrc/verify-golden-thread"
    given = {"ticket_id": "FIN-1234", "approved_by": "ciso@corp.com", "approved_at": "2025-01-15T10:30:00Z"}
    computed = await client.post(url, json=given, headers=tenant_a.headers)
    assert computed.status_code == 200, computed.text
    assert computed.json() == {
        "canonical": "approved_at=2025-01-15T10:30:00Z|approved_by=ciso@corp.com|ticket_id=FIN-1234",
        "hash": SPEC_HASH,
        "reference_hash": SPEC_HASH,
        "verified": None,
        "form": None,
    }
    # The reference implementation keeps the email's case: a hash made so verifies, and says which form.
    upper = {**given, "approved_by": "CISO@corp.com"}
    reference = (await client.post(url, json=upper, headers=tenant_a.headers)).json()["reference_hash"]
    assert reference != SPEC_HASH
    matched = await client.post(url, json={**upper, "hash": reference}, headers=tenant_a.headers)
    assert (matched.json()["verified"], matched.json()["form"]) == (True, "reference")
    spec_form = await client.post(url, json={**upper, "hash": SPEC_HASH}, headers=tenant_a.headers)
    assert (spec_form.json()["verified"], spec_form.json()["form"]) == (True, "spec")
    wrong = await client.post(url, json={**given, "hash": "sha256:" + "1" * 64}, headers=tenant_a.headers)
    assert (wrong.json()["verified"], wrong.json()["form"]) == (False, None)

    assert (await upload(client, tenant_a, card())).status_code == 201
    by_card = await client.post(url, json={"asset_card_id": "aigrc-2025-0a1b2c3d"}, headers=tenant_a.headers)
    assert (by_card.json()["verified"], by_card.json()["form"]) == (True, "spec")
    missing = await client.post(url, json={"ticket_id": "X"}, headers=tenant_a.headers)
    assert {e["pointer"] for e in assert_problem(missing, 400, "VALIDATION_FAILED")["errors"]} == {
        "/approved_by",
        "/approved_at",
    }
    bad_time = await client.post(
        url, json={**given, "approved_at": "yesterday noon"}, headers=tenant_a.headers
    )
    assert assert_problem(bad_time, 400, "VALIDATION_FAILED")["errors"][0]["pointer"] == "/approved_at"


async def test_compliance_status_from_a_recorded_scenario(
    client: AsyncClient, app: Any, tenant_a: TenantHandle
) -> None:
    high = card(
        **{"riskLevel: limited": "riskLevel: high", "name: Support triage agent": "name: <b>Triage</b>"}
    )
    assert (await upload(client, tenant_a, high)).status_code == 201
    agent = (await register(client, tenant_a, capabilities={"tools": ["web_search"]})).json()
    bearer = {"Authorization": f"Bearer {agent['identity_token']}"}
    for tool in ("web_search", "shell"):  # one allowed, one denied by capability
        body = {"action": "tool.call", "resource": tool, "context": {"tool": tool}}
        assert (await client.post("/v1/policies/check", json=body, headers=bearer)).status_code == 200
    paused = await client.post(
        "/v1/kill-switch/trigger",
        json={"agent_id": agent["agent_id"], "command": "PAUSE", "reason": "drill"},
        headers=tenant_a.headers,
    )
    assert paused.status_code == 201, paused.text
    ack = f"/v1/kill-switch/commands/{paused.json()['command_id']}/ack"
    assert (await client.post(ack, json={"outcome": "paused"}, headers=bearer)).status_code == 200
    await app.state.runtime.events.flush(everything=True)

    url = "/v1/aigrc/compliance/aigrc-2025-0a1b2c3d"
    first = await client.get(url, headers=tenant_a.headers)
    assert first.status_code == 200, first.text
    report = first.json()
    assert (report["asset_id"], report["risk_level"]) == ("aigrc-2025-0a1b2c3d", "high")
    assert report["runtime"]["agents_live"] == 1
    assert report["runtime"]["decisions_logged"] >= 1
    assert report["runtime"]["kill_switch_triggers"] == 1
    assert report["runtime"]["kill_switch_acknowledged"] == 1
    assert report["runtime"]["golden_thread_verified"] is True
    eu = next(p for p in report["profiles"] if p["profile"] == "eu-ai-act")
    controls = {c["id"]: c for c in eu["controls"]}
    assert controls["eu-art-12"]["status"] == "met"
    assert "runtime" in {e["source"] for e in controls["eu-art-12"]["evidence"]}
    assert controls["eu-art-14"]["status"] == "met"
    # Deterministic: asked again over the same log, the same report and hash.
    assert (await client.get(url, headers=tenant_a.headers)).json() == report
    assert report["report_hash"].startswith("sha256:")
    nist = await client.get(url, params={"profile": "nist-ai-rmf"}, headers=tenant_a.headers)
    assert [p["profile"] for p in nist.json()["profiles"]] == ["nist-ai-rmf"]

    page = await client.get(url, params={"format": "html"}, headers=tenant_a.headers)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;Triage&lt;/b&gt;" in page.text
    assert "<b>Triage</b>" not in page.text
    assert "eu-art-12" in page.text
    assert_problem(
        await client.get("/v1/aigrc/compliance/aigrc-2025-ffffffff", headers=tenant_a.headers),
        404,
        "ASSET_CARD_NOT_FOUND",
    )


async def test_a_cards_runtime_constraints_become_a_policy_on_its_agents(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    constrained = card().replace(
        "runtime:\n", "constraints:\n  runtime:\n    maxCostPerRequestUsd: 2.5\nruntime:\n", 1
    )
    assert (await upload(client, tenant_a, constrained)).status_code == 201
    policies = (await client.get("/v1/policies", headers=tenant_a.headers)).json()["policies"]
    (derived,) = policies
    assert derived["name"] == "AIGRC asset card aigrc-2025-0a1b2c3d"
    assert derived["target"]["selector"]["labels"] == {"aigrc_asset_card": "aigrc-2025-0a1b2c3d"}

    bound = (await register(client, tenant_a, capabilities={"tools": ["web_search"]})).json()
    # Another agent may not claim the card's label through its metadata.
    forged = await client.post(
        "/v1/agents/register",
        json={
            "name": "forger",
            "capabilities": {"tools": ["web_search"]},
            "metadata": {"aigrc_asset_card": "aigrc-2025-0a1b2c3d", "labels": {"aigrc_asset_card": "x"}},
        },
        headers=tenant_a.headers,
    )
    assert forged.status_code == 201

    async def check(agent: dict[str, Any], cost: float) -> dict[str, Any]:
        body = {
            "action": "tool.call",
            "resource": "web_search",
            "context": {"tool": "web_search", "estimated_cost": cost},
        }
        answered = await client.post(
            "/v1/policies/check", json=body, headers={"Authorization": f"Bearer {agent['identity_token']}"}
        )
        assert answered.status_code == 200, answered.text
        decided: dict[str, Any] = answered.json()
        return decided

    denied = await check(bound, 5.0)
    assert (denied["allowed"], denied["code"], denied["matched_rule"]) == (
        False,
        "CUSTOM_DENIED",
        "asset-card-max-cost-per-request",
    )
    assert (await check(bound, 1.0))["allowed"] is True
    assert (await check(forged.json(), 5.0))["allowed"] is True

    # The constraint goes with the card's next version: so does its policy.
    assert (await upload(client, tenant_a, card())).json()["change"] == "updated"
    assert (await client.get("/v1/policies", headers=tenant_a.headers)).json()["total"] == 0
    assert (await check(bound, 5.0))["allowed"] is True
    changes = await client.get(
        "/v1/audit/events", params={"event_type": "policy.*"}, headers=tenant_a.headers
    )
    made = [
        e["event_type"]
        for e in changes.json()["data"]
        if e["event_type"] in ("policy.created", "policy.deleted")
    ]
    assert made == ["policy.deleted", "policy.created"]
