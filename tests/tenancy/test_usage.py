"""Usage: counted per tenant, readable before and after a flush, exported, kept across restarts."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from aigos.server.config import Settings
from aigos.server.runtime import Runtime
from tests.helpers import TenantHandle, signup, signup_at
from tests.server_process import ServerProcess

METRICS = {"api_calls", "agent_registrations", "policy_checks"}
COLUMNS = ["tenant_id", "tenant_slug", "plan_tier", "day", "metric", "count"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Both backends, with the periodic flush out of the way: only the tests flush."""
    return settings.model_copy(update={"usage_flush_seconds": 3600.0})


def runtime_of(app: FastAPI) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


def today() -> date:
    return datetime.now(UTC).date()


def around_today() -> dict[str, str]:
    """A period that contains today even if the test runs across midnight or a month's end."""
    return {"start": str(today() - timedelta(days=1)), "end": str(today() + timedelta(days=1))}


async def usage_of(client: AsyncClient, tenant: TenantHandle, **params: str) -> dict[str, Any]:
    response = await client.get("/v1/usage", params=params or around_today(), headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def call(client: AsyncClient, tenant: TenantHandle, times: int) -> None:
    for _ in range(times):
        response = await client.get(f"/v1/tenants/{tenant.id}", headers=tenant.headers)
        assert response.status_code == 200, response.text


async def test_api_calls_are_counted_before_and_after_the_flush(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle
) -> None:
    await call(client, tenant_a, 7)
    body = await usage_of(client, tenant_a)
    # The usage request itself is the 8th call; nothing is flushed yet, so this comes from the buffer.
    assert body["totals"]["api_calls"] >= 7
    assert body["totals"]["api_calls"] == 8
    assert set(body["totals"]) == METRICS
    assert body["totals"]["agent_registrations"] == 0
    assert body["totals"]["policy_checks"] == 0
    assert body["daily"] == [{"day": str(today()), "metric": "api_calls", "count": 8}]
    assert body["tenant_id"] == tenant_a.id
    assert body["plan_tier"] == "free"

    await runtime_of(app).usage.flush()
    assert runtime_of(app).usage.pending(uuid.UUID(tenant_a.id)) == {}
    after = await usage_of(client, tenant_a)
    assert after["totals"]["api_calls"] == 9  # 8 stored + this request, pending


async def test_usage_reports_the_plan_limits_and_default_period(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    response = await client.get("/v1/usage", headers=tenant_a.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["end"] == str(today())
    assert body["start"] == str(today().replace(day=1))
    assert body["limits"] == {
        "max_agents": 10,
        "max_api_keys": 5,
        "max_members": 3,
        "tenant_rpm": 300,
        "tenant_rph": 5000,
    }
    assert body["totals"]["api_calls"] == 1


async def test_days_outside_the_period_are_not_reported(client: AsyncClient, tenant_a: TenantHandle) -> None:
    await call(client, tenant_a, 2)
    past = today() - timedelta(days=30)
    body = await usage_of(client, tenant_a, start=str(past - timedelta(days=5)), end=str(past))
    assert body["totals"] == dict.fromkeys(METRICS, 0)
    assert body["daily"] == []


async def test_tenants_never_see_each_others_counts(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    await call(client, tenant_a, 2)
    await call(client, tenant_b, 20)
    assert (await usage_of(client, tenant_a))["totals"]["api_calls"] == 3
    await runtime_of(app).usage.flush()
    assert (await usage_of(client, tenant_a))["totals"]["api_calls"] == 4
    assert (await usage_of(client, tenant_b))["totals"]["api_calls"] == 21


async def test_the_platform_token_has_no_usage_of_its_own(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get("/v1/usage", headers=admin_headers)
    assert response.status_code == 403
    assert response.json()["code"] == "TENANT_REQUIRED"


async def test_usage_needs_the_usage_read_scope(client: AsyncClient, tenant_a: TenantHandle) -> None:
    created = await client.post(
        "/v1/api-keys", json={"name": "r", "scopes": ["tenant:read"]}, headers=tenant_a.headers
    )
    key = created.json()["key"]
    refused = await client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 403
    assert refused.json()["code"] == "INSUFFICIENT_SCOPE"
    refused = await client.get("/v1/usage/export", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 403
    created = await client.post(
        "/v1/api-keys", json={"name": "u", "scopes": ["usage:read"]}, headers=tenant_a.headers
    )
    allowed = await client.get("/v1/usage", headers={"Authorization": f"Bearer {created.json()['key']}"})
    assert allowed.status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"start": "2026-03-02", "end": "2026-03-01"},
        {"start": "2024-01-01", "end": "2025-01-01"},  # 367 days
        {"start": "2026-02-30"},
        {"end": "yesterday"},
    ],
)
async def test_bad_periods_are_400(
    client: AsyncClient, tenant_a: TenantHandle, admin_headers: dict[str, str], params: dict[str, str]
) -> None:
    for path, headers in [
        ("/v1/usage", tenant_a.headers),
        ("/v1/usage/export", tenant_a.headers),
        ("/v1/usage/export", admin_headers),
    ]:
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "VALIDATION_FAILED"


async def test_a_full_leap_year_is_allowed(client: AsyncClient, tenant_a: TenantHandle) -> None:
    body = await usage_of(client, tenant_a, start="2024-01-01", end="2024-12-31")
    assert body["start"] == "2024-01-01"


async def test_unknown_export_format_is_400(client: AsyncClient, tenant_a: TenantHandle) -> None:
    response = await client.get("/v1/usage/export", params={"format": "xml"}, headers=tenant_a.headers)
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_FAILED"


async def export_json(client: AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.get("/v1/usage/export", params=around_today(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


async def export_csv(client: AsyncClient, headers: dict[str, str]) -> list[dict[str, str]]:
    period = around_today()
    response = await client.get("/v1/usage/export", params={**period, "format": "csv"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="aigos-usage-{period["start"]}-{period["end"]}.csv"'
    )
    reader = csv.DictReader(io.StringIO(response.text))
    assert reader.fieldnames == COLUMNS
    return list(reader)


async def test_tenant_export_includes_unflushed_counts_and_only_its_own_rows(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    await call(client, tenant_a, 3)
    await call(client, tenant_b, 5)
    body = await export_json(client, tenant_a.headers)
    assert body["start"] == around_today()["start"]
    assert body["end"] == around_today()["end"]
    assert datetime.fromisoformat(body["generated_at"]).tzinfo is not None
    # No periodic flush ran: the export flushed this process's buffer, its own request included.
    assert body["rows"] == [
        {
            "tenant_id": tenant_a.id,
            "tenant_slug": tenant_a.slug,
            "plan_tier": "free",
            "day": str(today()),
            "metric": "api_calls",
            "count": 4,
        }
    ]
    rows = await export_csv(client, tenant_a.headers)
    assert rows == [
        {
            "tenant_id": tenant_a.id,
            "tenant_slug": tenant_a.slug,
            "plan_tier": "free",
            "day": str(today()),
            "metric": "api_calls",
            "count": "5",
        }
    ]
    assert tenant_b.id not in (await client.get("/v1/usage/export", headers=tenant_a.headers)).text


async def test_platform_export_covers_every_tenant(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle, admin_headers: dict[str, str]
) -> None:
    await call(client, tenant_a, 2)
    await call(client, tenant_b, 6)
    upgraded = await client.put(
        f"/v1/tenants/{tenant_b.id}", json={"plan_tier": "pro"}, headers=admin_headers
    )
    assert upgraded.status_code == 200, upgraded.text
    expected = {
        tenant_a.id: {"tenant_slug": tenant_a.slug, "plan_tier": "free", "count": 2},
        tenant_b.id: {"tenant_slug": tenant_b.slug, "plan_tier": "pro", "count": 6},
    }

    body = await export_json(client, admin_headers)
    by_tenant = {row["tenant_id"]: row for row in body["rows"]}
    assert set(by_tenant) == set(expected)
    for tenant_id, want in expected.items():
        row = by_tenant[tenant_id]
        assert (row["tenant_slug"], row["plan_tier"], row["count"]) == (
            want["tenant_slug"],
            want["plan_tier"],
            want["count"],
        )
        assert row["metric"] == "api_calls"
        assert row["day"] == str(today())

    rows = await export_csv(client, admin_headers)
    assert {row["tenant_id"] for row in rows} == set(expected)
    for row in rows:
        want = expected[row["tenant_id"]]
        assert row["tenant_slug"] == want["tenant_slug"]
        assert row["plan_tier"] == want["plan_tier"]
        assert int(row["count"]) == want["count"]


async def test_export_without_usage_is_empty_but_well_formed(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert (await export_json(client, admin_headers))["rows"] == []
    assert await export_csv(client, admin_headers) == []


@pytest.mark.slow
def test_usage_survives_a_graceful_shutdown(tmp_path: Path) -> None:
    # A flush interval no test outlives: only the flush on SIGTERM can write the counts.
    env = {"AIGOS_USAGE_FLUSH_SECONDS": "3600"}
    first = ServerProcess(tmp_path, env).start()
    try:
        signed_up = signup_at(first.base_url, "Durable")
        tenant_id, headers = signed_up.id, signed_up.headers
        for _ in range(6):
            assert httpx.get(f"{first.base_url}/v1/tenants/{tenant_id}", headers=headers).status_code == 200
    finally:
        code = first.terminate()
    assert code == 0, first.output()

    with ServerProcess(tmp_path, env) as second:
        response = httpx.get(second.base_url + "/v1/usage", params=around_today(), headers=headers)
    assert response.status_code == 200, response.text
    # Six calls written on shutdown, plus this request, still in the new process's buffer.
    assert response.json()["totals"]["api_calls"] == 7


async def test_signup_itself_is_not_an_api_call(client: AsyncClient) -> None:
    tenant = await signup(client, "Gamma")
    assert (await usage_of(client, tenant))["totals"]["api_calls"] == 1
