"""The edge on both backends: what PostgreSQL and SQLite would not store alike is refused with a 400 naming
the field (never a 500 on one backend and a stored row on the other), and inputs that used to fail on
one backend now answer the same on both."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient, Response

from aigos.server.app import create_app
from tests.conftest import embedded_settings
from tests.helpers import TenantHandle, signup
from tests.identity.helpers import access_token, assert_problem, bearer, pointers, register

JSON = {"Content-Type": "application/json"}


def refused_at(response: Response) -> str:
    """The one field a ``VALIDATION_FAILED`` problem names."""
    (pointer,) = pointers(response)
    return pointer


async def agent_token(client: AsyncClient, tenant: TenantHandle) -> str:
    """A registered agent's access token, allowed to check and report telemetry."""
    reg = await register(client, tenant)
    return await access_token(client, reg)


# -- NUL and lone surrogates: text PostgreSQL cannot store ------------------------------------------------


async def test_nul_in_a_policy_check_context_is_refused(client: AsyncClient, tenant_a: TenantHandle) -> None:
    token = await agent_token(client, tenant_a)
    body = {"action": "read", "resource": "doc", "context": {"tool": "web\u0000search"}}
    response = await client.post("/v1/policies/check", json=body, headers=bearer(token))
    assert refused_at(response) == "/context/tool"
    # The same check without the NUL is answered as before.
    body["context"] = {"tool": "web_search"}
    assert (await client.post("/v1/policies/check", json=body, headers=bearer(token))).status_code == 200


async def test_nul_in_telemetry_is_refused_in_values_and_keys(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    token = await agent_token(client, tenant_a)
    in_value = {"events": [{"event_type": "tool.completed", "trace_id": "t\u0000"}]}
    response = await client.post("/v1/telemetry", json=in_value, headers=bearer(token))
    assert refused_at(response) == "/events/0/trace_id"
    in_key = {"events": [{"event_type": "tool.completed", "data": {"ok": 1, "a\u0000b": 1}}]}
    response = await client.post("/v1/telemetry", json=in_key, headers=bearer(token))
    assert refused_at(response) == "/events/0/data/a\u0000b"
    assert "key" in response.json()["errors"][0]["detail"]


async def test_nul_in_an_agent_name_is_refused(client: AsyncClient, tenant_a: TenantHandle) -> None:
    response = await client.post("/v1/agents", json={"name": "bot\u0000"}, headers=tenant_a.headers)
    assert refused_at(response) == "/name"
    listed = await client.get("/v1/agents", headers=tenant_a.headers)
    assert listed.json()["total"] == 0


async def test_a_lone_surrogate_escape_is_refused(client: AsyncClient, tenant_a: TenantHandle) -> None:
    raw = b'{"name": "bot \\ud800 one"}'
    response = await client.post("/v1/agents", content=raw, headers={**tenant_a.headers, **JSON})
    body = assert_problem(response, 400, "VALIDATION_FAILED")
    assert body["errors"][0]["pointer"] == "/name"
    assert "surrogate" in body["errors"][0]["detail"]


async def test_nul_in_query_filters_is_refused(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agents = await client.get("/v1/agents", params={"q": "a\u0000"}, headers=tenant_a.headers)
    assert refused_at(agents) == "query:q"
    events = await client.get("/v1/audit/events", params={"actor_id": "\u0000"}, headers=tenant_a.headers)
    assert refused_at(events) == "query:actor_id"
    fine = await client.get("/v1/agents", params={"q": "a"}, headers=tenant_a.headers)
    assert fine.status_code == 200


async def test_nul_in_a_path_parameter_is_refused(client: AsyncClient, tenant_a: TenantHandle) -> None:
    response = await client.get("/v1/tenants/%00", headers=tenant_a.headers)
    assert refused_at(response).startswith("path:")


async def test_nul_in_an_oauth_form_is_an_rfc6749_error(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    response = await client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "policies:check\u0000"},
        auth=(reg["client_id"], reg["client_secret"]),
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert "scope" in response.json()["error_description"]


# -- numbers: finite, within 64 bits, within their column -------------------------------------------------


async def test_non_finite_budgets_are_refused(client: AsyncClient, tenant_a: TenantHandle) -> None:
    for raw in (
        b'{"name": "bot", "capabilities": {"max_budget": 1e309}}',
        b'{"name": "bot", "capabilities": {"max_budget": NaN}}',
        b'{"name": "bot", "capabilities": {"max_budget": -Infinity}}',
    ):
        response = await client.post("/v1/agents", content=raw, headers={**tenant_a.headers, **JSON})
        assert refused_at(response) == "/capabilities/max_budget", raw
    response = await client.post(
        "/v1/agents", json={"name": "bot", "capabilities": {"max_budget": "inf"}}, headers=tenant_a.headers
    )
    assert refused_at(response) == "/capabilities/max_budget"
    listed = await client.get("/v1/agents", headers=tenant_a.headers)
    assert listed.json()["total"] == 0


async def test_integers_past_64_bits_and_past_4300_digits_are_refused(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    raw = b'{"name": "bot", "metadata": {"n": 9223372036854775808}}'
    response = await client.post("/v1/agents", content=raw, headers={**tenant_a.headers, **JSON})
    assert refused_at(response) == "/metadata/n"
    huge = b'{"name": "bot", "metadata": {"n": ' + b"9" * 5000 + b"}}"
    response = await client.post("/v1/agents", content=huge, headers={**tenant_a.headers, **JSON})
    assert_problem(response, 400, "MALFORMED_JSON")


async def test_an_oasf_record_with_an_infinite_budget_is_refused(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    for budget in ("inf", "nan", "1e309"):
        record = {"name": "bot", "version": "1.0.0", "annotations": {"aigos.max_budget": budget}}
        response = await client.post("/v1/agents/import/oasf", json=record, headers=tenant_a.headers)
        assert refused_at(response) == "/annotations/aigos.max_budget", budget


async def test_a_simulated_agent_holds_real_capabilities(client: AsyncClient, tenant_a: TenantHandle) -> None:
    request = {"action": "read", "resource": "doc"}
    for capabilities in ({"max_budget": "inf"}, {"max_budget": "lots"}):
        response = await client.post(
            "/v1/policies/simulate",
            json={"agent": {"capabilities": capabilities}, "request": request},
            headers=tenant_a.headers,
        )
        assert_problem(response, 400, "VALIDATION_FAILED")
    response = await client.post(
        "/v1/policies/simulate",
        json={"agent": {"capabilities": {"max_budget": 5}}, "request": request},
        headers=tenant_a.headers,
    )
    assert response.status_code == 200, response.text


# -- depth ------------------------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_deeply_nested_settings_are_refused(client: AsyncClient, tenant_a: TenantHandle) -> None:
    response = await client.put(
        f"/v1/tenants/{tenant_a.id}", json={"settings": nested(255)}, headers=tenant_a.headers
    )
    assert refused_at(response).startswith("/settings/a/a/")
    # A body nested far past what the JSON reader itself recurses into is refused too, not a 500.
    raw = b"[" * 100_000 + b"]" * 100_000
    response = await client.put(
        f"/v1/tenants/{tenant_a.id}", content=raw, headers={**tenant_a.headers, **JSON}
    )
    assert_problem(response, 400, "VALIDATION_FAILED")
    shallow = await client.put(
        f"/v1/tenants/{tenant_a.id}", json={"settings": nested(20)}, headers=tenant_a.headers
    )
    assert shallow.status_code == 200, shallow.text
    assert shallow.json()["settings"] == nested(20)


# -- the kill switch --------------------------------------------------------------------------------------


async def test_a_tenant_wide_trigger_with_no_agent_affects_none(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    response = await client.post(
        "/v1/kill-switch/trigger", json={"all_agents": True, "reason": "drill"}, headers=tenant_a.headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["commands"] == []
    assert response.json()["skipped"] == []
    events = await client.get(
        "/v1/audit/events", params={"event_type": "kill_switch.triggered"}, headers=tenant_a.headers
    )
    assert events.status_code == 200, events.text
    assert events.json()["total"] == 1


# -- SQLite under concurrent writes -----------------------------------------------------------------------


async def test_writes_wait_for_another_writer_on_sqlite(
    tmp_path: Path, admin_headers: dict[str, str]
) -> None:
    """Concurrent writes through the API while another process (a backup, the retention CLI) holds the
    embedded database's write lock for a few seconds, within the requests' deadline, pool wait and lane:
    every write waits its turn, none fails. (Past them they are answered 503: see ``test_overload.py``.)"""
    # Rate limits high enough that only the database could refuse a write.
    settings = embedded_settings(
        tmp_path / "data",
        default_rate_limit_rpm=10_000,
        default_rate_limit_rph=10_000,
        request_deadline_seconds=12.0,
        database_pool_timeout_seconds=12.0,
        max_requests_in_flight=32,
    )
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as client,
    ):
        tenant = await signup(client, "Busy", plan_tier="pro", headers=admin_headers)

        async def write(n: int) -> Response:
            if n % 3 == 0:
                return await client.put(
                    f"/v1/tenants/{tenant.id}", json={"name": f"Busy {n}"}, headers=tenant.headers
                )
            if n % 3 == 1:
                return await client.post(
                    "/v1/agents/register", json={"name": f"bot-{n}"}, headers=tenant.headers
                )
            key = {"name": f"key-{n}", "scopes": ["agents:read"]}
            return await client.post("/v1/api-keys", json=key, headers=tenant.headers)

        other = sqlite3.connect(settings.data_dir / "aigos.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            writes = asyncio.gather(*(write(n) for n in range(30)))
            # Longer than a writer used to wait before failing with "database is locked".
            await asyncio.sleep(6)
            other.execute("COMMIT")
            responses = await writes
        finally:
            other.close()
        failed = [response.text for response in responses if response.status_code >= 300]
        assert failed == []
        listed = await client.get("/v1/agents", headers=tenant.headers)
        assert listed.json()["total"] == 10
