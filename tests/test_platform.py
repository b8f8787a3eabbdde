"""Health, readiness, info, docs: on both backends."""

from __future__ import annotations

from httpx import AsyncClient

from aigos import __version__


async def test_health_is_ok(client: AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_checks_database_bus_and_event_log(client: AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "up", "bus": "up", "eventlog": "up"}}


async def test_info_names_version_and_backends(client: AsyncClient, backend: str) -> None:
    body = (await client.get("/v1/info")).json()
    assert body["name"] == "aigos"
    assert body["version"] == __version__
    expected = (
        {"database": "sqlite", "bus": "memory", "embedded": True}
        if backend == "embedded"
        else {"database": "postgresql", "bus": "redis", "embedded": False}
    )
    assert body["backends"] == expected
    assert "platform" in body["features"]


async def test_openapi_and_docs_are_served(client: AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "AIGOS"
    assert "/health/ready" in spec["paths"]
    assert "Problem" in spec["components"]["schemas"]
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "/docs/static/swagger-ui-bundle.js" in page.text
    assert "unsafe-inline'; img" in page.headers["content-security-policy"]
    script = await client.get("/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.text[:200_000]


async def test_metrics_expose_the_event_log_queue(client: AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = dict(line.rsplit(" ", 1) for line in response.text.splitlines() if not line.startswith("#"))
    assert float(lines["aigos_eventlog_queue_depth"]) >= 0
    assert float(lines["aigos_eventlog_queue_capacity"]) > 0
    assert {"aigos_eventlog_appended_total", "aigos_eventlog_dropped_total"} <= set(lines)
