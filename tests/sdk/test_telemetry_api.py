"""``POST /v1/telemetry``: agent-reported events land in the tenant's event log, marked as the agent's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.helpers import TenantHandle
from tests.identity.helpers import access_token, bearer, register


async def report(client: AsyncClient, token: str, events: list[dict[str, Any]]) -> Any:
    """``POST /v1/telemetry`` with an agent token."""
    return await client.post("/v1/telemetry", json={"events": events}, headers=bearer(token))


async def test_reported_events_appear_in_the_audit_log_as_the_agents(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle
) -> None:
    agent = await register(client, tenant_a, name="reporter")
    token = agent["identity_token"]
    events = [
        {"event_type": "tool.completed", "data": {"tool": "web_search", "duration_ms": 12.5}},
        {
            "event_type": "llm.call",
            "timestamp": "2026-01-02T03:04:05Z",
            "data": {"model": "m"},
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
            "event_id": "9f1c2a54-3b8f-4c35-9a53-6f3b43f0f1aa",
        },
    ]
    response = await report(client, token, events)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2}
    await app.state.runtime.events.flush(everything=True)

    listed = await client.get("/v1/audit/events", params={"source": "agent"}, headers=tenant_a.headers)
    assert listed.status_code == 200, listed.text
    entries = {e["event_type"]: e for e in listed.json()["data"]}
    assert set(entries) == {"tool.completed", "llm.call"}
    tool, llm = entries["tool.completed"], entries["llm.call"]
    assert tool["source"] == "agent"
    assert tool["agent_id"] == agent["agent_id"]
    assert tool["actor"] == {"type": "agent", "id": agent["agent_id"]}
    assert tool["data"] == {"tool": "web_search", "duration_ms": 12.5}
    assert llm["timestamp"].startswith("2026-01-02T03:04:05")
    assert (llm["trace_id"], llm["span_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert llm["event_id"] == "9f1c2a54-3b8f-4c35-9a53-6f3b43f0f1aa"


async def test_refusals(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agent = await register(client, tenant_a, name="reporter")
    token = agent["identity_token"]

    for reserved in ("policy.decision", "kill_switch.acknowledged", "Agent.created", "budget.spent"):
        response = await report(client, token, [{"event_type": "tool.ok"}, {"event_type": reserved}])
        assert response.status_code == 400, reserved
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "RESERVED_EVENT_TYPE"
        assert reserved in response.json()["detail"]

    empty = await report(client, token, [])
    assert empty.status_code == 400
    assert empty.json()["code"] == "VALIDATION_FAILED"
    too_many = await report(client, token, [{"event_type": "custom.n"}] * 501)
    assert too_many.status_code == 400
    most = await report(client, token, [{"event_type": "custom.n"}] * 500)
    assert most.status_code == 202
    assert most.json() == {"accepted": 500}

    for bad in ({"event_type": "nodots"}, {"event_type": "tool.*"}, {"event_type": "x.y", "data": []}):
        assert (await report(client, token, [bad])).status_code == 400, bad

    # NaN parses (Python's JSON reader takes it) but is not JSON: refused, never queued as a poison event.
    nan = await client.post(
        "/v1/telemetry",
        content=b'{"events": [{"event_type": "tool.ok"}, {"event_type": "tool.x", "data": {"v": NaN}}]}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert nan.status_code == 400, nan.text
    assert nan.json()["errors"][0]["pointer"] in ("/events/1/data", "/events/1/data/v")

    # An agent's clock may run a little ahead, not a week: the whole batch is refused, with the pointer.
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert (await report(client, token, [{"event_type": "tool.ok", "timestamp": soon}])).status_code == 202
    later = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    future = await report(
        client, token, [{"event_type": "tool.ok"}, {"event_type": "tool.x", "timestamp": later}]
    )
    assert future.status_code == 400, future.text
    assert future.json()["errors"][0]["pointer"] == "/events/1/timestamp"

    # The agent plane only: no token, an admin key, a garbage token.
    anonymous = await client.post("/v1/telemetry", json={"events": [{"event_type": "tool.ok"}]})
    assert anonymous.status_code == 401
    assert (await report(client, tenant_a.key, [{"event_type": "tool.ok"}])).status_code == 401
    assert (await report(client, "not-a-token", [{"event_type": "tool.ok"}])).status_code == 401


async def test_needs_the_telemetry_scope(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agent = await register(client, tenant_a, name="narrow")
    narrow = await access_token(client, agent, scope="agent policies:check")
    response = await report(client, narrow, [{"event_type": "tool.ok"}])
    assert response.status_code == 403
    assert response.json()["code"] == "INSUFFICIENT_SCOPE"


async def check(client: AsyncClient, token: str, telemetry: list[dict[str, Any]]) -> Any:
    """``POST /v1/policies/check`` carrying ``telemetry``."""
    body = {"action": "tool.call", "resource": "web_search", "context": {"tool": "web_search"}}
    return await client.post(
        "/v1/policies/check", json={**body, "telemetry": telemetry}, headers=bearer(token)
    )


async def test_a_check_carries_the_previous_calls_outcomes_into_the_log(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle
) -> None:
    agent = await register(client, tenant_a, name="carrier")
    token = agent["identity_token"]
    outcomes = [
        {"event_type": "tool.completed", "data": {"tool": "web_search", "duration_ms": 3.5}},
        {"event_type": "tool.failed", "data": {"tool": "web_search", "error": "Timeout"}, "trace_id": "ab"},
    ]
    response = await check(client, token, outcomes)
    assert response.status_code == 200, response.text
    assert "allowed" in response.json()
    await app.state.runtime.events.flush(everything=True)

    listed = await client.get("/v1/audit/events", params={"source": "agent"}, headers=tenant_a.headers)
    entries = {e["event_type"]: e for e in listed.json()["data"]}
    assert set(entries) == {"tool.completed", "tool.failed"}
    assert entries["tool.completed"]["data"] == {"tool": "web_search", "duration_ms": 3.5}
    assert entries["tool.failed"]["agent_id"] == agent["agent_id"]
    assert entries["tool.failed"]["trace_id"] == "ab"
    decisions = await client.get("/v1/audit/events", params={"source": "server"}, headers=tenant_a.headers)
    assert any(e["event_type"].startswith("policy.") for e in decisions.json()["data"])


async def test_what_a_check_carries_is_held_to_the_telemetry_rules(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle
) -> None:
    agent = await register(client, tenant_a, name="carrier")
    token = agent["identity_token"]
    forged = await check(client, token, [{"event_type": "tool.ok"}, {"event_type": "policy.checked"}])
    assert forged.status_code == 400
    assert forged.json()["code"] == "RESERVED_EVENT_TYPE"
    nan = await client.post(
        "/v1/policies/check",
        content=b'{"action": "tool.call", "resource": "x", "telemetry": [{"event_type": "tool.x", '
        b'"data": {"v": NaN}}]}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert nan.status_code == 400, nan.text
    assert nan.json()["errors"][0]["pointer"] in ("/telemetry/0/data", "/telemetry/0/data/v")
    too_many = await check(client, token, [{"event_type": "custom.n"}] * 101)
    assert too_many.status_code == 400
    narrow = await access_token(client, agent, scope="agent policies:check")
    refused = await check(client, narrow, [{"event_type": "tool.ok"}])
    assert refused.status_code == 403
    assert refused.json()["code"] == "INSUFFICIENT_SCOPE"
    assert (await check(client, narrow, [])).status_code == 200
    # A refused check decided nothing and recorded nothing.
    await app.state.runtime.events.flush(everything=True)
    listed = await client.get("/v1/audit/events", params={"source": "agent"}, headers=tenant_a.headers)
    assert listed.json()["data"] == []
