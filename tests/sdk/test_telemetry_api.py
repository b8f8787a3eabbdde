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
    assert response.json() == {"accepted": 2, "refused": []}
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


async def test_refusals(client: AsyncClient, app: FastAPI, tenant_a: TenantHandle) -> None:
    agent = await register(client, tenant_a, name="reporter")
    token = agent["identity_token"]

    # A batch is judged event by event: the good ones are recorded, each bad one named with a code.
    for reserved in ("policy.decision", "kill_switch.acknowledged", "Agent.created", "budget.spent"):
        response = await report(client, token, [{"event_type": "tool.ok"}, {"event_type": reserved}])
        assert response.status_code == 202, reserved
        (refused,) = response.json()["refused"]
        assert refused["index"] == 1
        assert refused["pointer"] == "/events/1/event_type"
        assert refused["code"] == "RESERVED_EVENT_TYPE"
        assert reserved in refused["detail"]
        assert response.json()["accepted"] == 1
        # Alone, nothing is recorded: the answer is the problem, one entry per event.
        alone = await report(client, token, [{"event_type": reserved}])
        assert alone.status_code == 400
        assert alone.headers["content-type"].startswith("application/problem+json")
        assert alone.json()["code"] == "RESERVED_EVENT_TYPE"
        assert reserved in alone.json()["detail"]

    # The batch itself: empty, or past its limit, is refused whole.
    empty = await report(client, token, [])
    assert empty.status_code == 400
    assert empty.json()["code"] == "VALIDATION_FAILED"
    too_many = await report(client, token, [{"event_type": "custom.n"}] * 501)
    assert too_many.status_code == 400
    assert too_many.json()["errors"][0]["pointer"] == "/events"
    most = await report(client, token, [{"event_type": "custom.n"}] * 500)
    assert most.status_code == 202
    assert most.json() == {"accepted": 500, "refused": []}
    not_a_list = await client.post("/v1/telemetry", json={"events": {}}, headers=bearer(token))
    assert not_a_list.status_code == 400

    bad = [{"event_type": "nodots"}, {"event_type": "tool.*"}, {"event_type": "x.y", "data": []}, "text"]
    every = await report(client, token, bad)  # type: ignore[list-item]
    assert every.status_code == 400
    assert every.json()["code"] == "VALIDATION_FAILED"
    assert [e["pointer"] for e in every.json()["errors"]] == [
        "/events/0/event_type",
        "/events/1/event_type",
        "/events/2/data",
        "/events/3",
    ]

    # NaN and NUL parse (Python's JSON reader takes NaN) but are not storable: that event alone is refused,
    # never queued as a poison event.
    mixed = await client.post(
        "/v1/telemetry",
        content=b'{"events": [{"event_type": "tool.ok"}, {"event_type": "tool.x", "data": {"v": NaN}}, '
        b'{"event_type": "tool.y", "trace_id": "t\\u0000"}, {"event_type": "tool.z", "data": {"k": 1}}]}',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert mixed.status_code == 202, mixed.text
    assert mixed.json()["accepted"] == 2
    assert [(e["index"], e["pointer"], e["code"]) for e in mixed.json()["refused"]] == [
        (1, "/events/1/data/v", "VALIDATION_FAILED"),
        (2, "/events/2/trace_id", "VALIDATION_FAILED"),
    ]
    await app.state.runtime.events.flush(everything=True)
    listed = await client.get(
        "/v1/audit/events", params={"event_type": "tool.*", "source": "agent"}, headers=tenant_a.headers
    )
    recorded = {e["event_type"] for e in listed.json()["data"]}
    assert {"tool.ok", "tool.z"} <= recorded
    assert not {"tool.x", "tool.y"} & recorded

    # An agent's clock may run a little ahead, not a week: that event is refused, with its pointer.
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert (await report(client, token, [{"event_type": "tool.ok", "timestamp": soon}])).status_code == 202
    later = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    future = await report(
        client, token, [{"event_type": "tool.ok"}, {"event_type": "tool.x", "timestamp": later}]
    )
    assert future.status_code == 202, future.text
    assert future.json()["refused"][0]["pointer"] == "/events/1/timestamp"
    assert future.json()["refused"][0]["code"] == "CLOCK_SKEW"

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
    # A check has no room in its answer for refused events: one bad event refuses the check, naming it.
    skewed = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    late = await check(
        client, token, [{"event_type": "tool.ok"}, {"event_type": "tool.x", "timestamp": skewed}]
    )
    assert late.status_code == 400
    assert late.json()["code"] == "CLOCK_SKEW"
    assert late.json()["errors"] == [
        {
            "pointer": "/telemetry/1/timestamp",
            "detail": late.json()["errors"][0]["detail"],
            "code": "CLOCK_SKEW",
        }
    ]
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


async def test_what_the_event_log_has_no_room_for_is_given_back(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle
) -> None:
    agent = await register(client, tenant_a, name="busy")
    token = agent["identity_token"]
    events = app.state.runtime.events
    await events.flush(everything=True)
    size = events.queue_size
    events.queue_size = 2
    try:
        batch = [{"event_type": "tool.ok"}, {"event_type": "policy.x"}, *[{"event_type": "tool.n"}] * 3]
        response = await report(client, token, batch)
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == 2
        # Not dropped: refused one by one, to be sent again. The reserved type stays refused as such.
        assert [(e["index"], e["code"]) for e in response.json()["refused"]] == [
            (1, "RESERVED_EVENT_TYPE"),
            (3, "TELEMETRY_BACKLOG"),
            (4, "TELEMETRY_BACKLOG"),
        ]
        full = await report(client, token, [{"event_type": "tool.ok"}])
        assert full.status_code == 503
        assert full.json()["code"] == "TELEMETRY_BACKLOG"
        assert full.headers["Retry-After"] == "1"
    finally:
        events.queue_size = size
    assert events.tallies.dropped == 0
