"""A caller's W3C ``traceparent`` on both backends: the governance events its request records join its
trace (``trace_id``, ``span_id``); an invalid one is ignored; an agent's own ids on a reported event win."""

from __future__ import annotations

from fastapi import FastAPI
from httpx import AsyncClient

from tests.helpers import TenantHandle, bearer
from tests.identity.helpers import register

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


async def test_events_recorded_for_a_traced_request_carry_its_trace(
    app: FastAPI, client: AsyncClient, tenant_a: TenantHandle
) -> None:
    agent = await register(client, tenant_a)
    token = agent["identity_token"]
    body = {"action": "read", "resource": "db"}
    traced = {**bearer(token), "traceparent": f"00-{TRACE}-{PARENT}-01"}
    assert (await client.post("/v1/policies/check", json=body, headers=traced)).status_code == 200
    invalid = {**bearer(token), "traceparent": f"00-{'0' * 32}-{PARENT}-01"}
    assert (await client.post("/v1/policies/check", json=body, headers=invalid)).status_code == 200
    own = {"event_type": "tool.called", "trace_id": "a" * 32, "span_id": "b" * 16}
    reported = await client.post("/v1/telemetry", json={"events": [own]}, headers=traced)
    assert reported.status_code == 202
    await app.state.runtime.events.flush(everything=True)

    listed = await client.get(
        "/v1/audit/events", params={"agent_id": agent["agent_id"], "limit": 10}, headers=tenant_a.headers
    )
    found = [(e["event_type"], e["trace_id"], e["span_id"]) for e in listed.json()["data"]]
    assert found[:3] == [
        ("tool.called", "a" * 32, "b" * 16),
        ("policy.checked", None, None),
        ("policy.checked", TRACE, PARENT),
    ]
    # Nothing of the request's trace leaks into what comes after it.
    assert ("agent.registered", None, None) in found
