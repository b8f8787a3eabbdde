"""OpenTelemetry on both backends, exported to a real OTLP/HTTP receiver: one server span per request,
a child of the caller's traceparent, whose ids the events the request recorded carry; off when no
endpoint is set."""

from __future__ import annotations

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from aigos.server.app import create_app
from aigos.server.config import Settings
from aigos.server.telemetry import otel
from tests.helpers import bearer, signup
from tests.identity.helpers import register
from tests.otlp import OtlpReceiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


async def test_spans_reach_the_receiver_and_join_the_events(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        app = create_app(settings)
        async with (
            LifespanManager(app) as manager,
            AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as client,
        ):
            tenant = await signup(client)
            agent = await register(client, tenant)
            body = {"action": "read", "resource": "db"}
            traced = {**bearer(agent["identity_token"]), "traceparent": f"00-{TRACE}-{PARENT}-01"}
            assert (await client.post("/v1/policies/check", json=body, headers=traced)).status_code == 200
            plain = bearer(agent["identity_token"])
            assert (await client.post("/v1/policies/check", json=body, headers=plain)).status_code == 200
            await app.state.runtime.events.flush(everything=True)
            listed = await client.get(
                "/v1/audit/events",
                params={"event_type": "policy.checked", "agent_id": agent["agent_id"]},
                headers=tenant.headers,
            )
            untraced_event, traced_event = listed.json()["data"]
        # Stopped: what was batched has been exported.
        checks = [span for span in receiver.spans if span.name == "POST /v1/policies/check"]
    assert len(checks) == 2
    assert {span.service for span in checks} == {"aigos"}
    by_trace = {span.trace_id: span for span in checks}
    # The caller's trace continues through AIGOS: its span is the parent, the event carries AIGOS's span.
    child = by_trace[TRACE]
    assert child.parent_span_id == PARENT
    assert (traced_event["trace_id"], traced_event["span_id"]) == (TRACE, child.span_id)
    assert child.attributes["http.route"] == "/v1/policies/check"
    assert child.attributes["http.response.status_code"] == 200
    # The statements a request ran are its children.
    statements = [span for span in receiver.spans if span.parent_span_id == child.span_id]
    assert statements, [span.name for span in receiver.spans if span.trace_id == TRACE]
    assert {span.attributes["db.system.name"] for span in statements} <= {"postgresql", "sqlite", "redis"}
    assert all(span.name == str(span.attributes["db.operation.name"]) for span in statements)
    if settings.redis_url:
        # Rate limits are Redis scripts: each command a request sends is its child, named, keys left out.
        requests = {span.span_id for span in receiver.spans if span.name.startswith(("GET ", "POST "))}
        sent = [span for span in receiver.spans if span.attributes.get("db.system.name") == "redis"]
        assert sent
        assert all(span.parent_span_id in requests for span in sent)
        assert {span.name for span in sent} <= {"EVALSHA", "EVAL", "GET", "SET", "INCRBY", "MGET", "GETDEL"}
    # Without a traceparent AIGOS starts the trace, and its event joins it all the same.
    root = by_trace[untraced_event["trace_id"]]
    assert (root.parent_span_id, root.span_id) == ("", untraced_event["span_id"])


def test_off_unless_an_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*otel.ENDPOINT_VARIABLES, "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert not otel.wanted()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")
    assert otel.wanted()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not otel.wanted()
