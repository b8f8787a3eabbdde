"""Cross-cutting HTTP behaviour: problem bodies for every error, request ids, headers, limits."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel, Field

from aigos.server.errors import Conflict

PROBLEM = "application/problem+json"


class Widget(BaseModel):
    name: str = Field(min_length=1, max_length=20)
    size: int = Field(ge=1)


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    """The real app plus endpoints that take a body, conflict and crash, to exercise the error paths."""

    @app.post("/test/widgets", status_code=201)
    async def create_widget(widget: Widget) -> Widget:
        return widget

    @app.post("/test/conflict")
    async def conflict() -> None:
        raise Conflict("the widget exists", code="WIDGET_EXISTS", widget_id="w1")

    @app.get("/test/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    return app


def assert_problem(response_status: int, body: dict[str, object], status: int, code: str) -> None:
    assert response_status == status
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    assert isinstance(body["request_id"], str)
    assert str(body["type"]).endswith(code.lower().replace("_", "-"))


async def test_valid_body_passes(client: AsyncClient) -> None:
    response = await client.post("/test/widgets", json={"name": "a", "size": 2})
    assert response.status_code == 201
    assert response.json() == {"name": "a", "size": 2}


@pytest.mark.parametrize(
    "garbage",
    [b"{not json", b"\xff\xfe\x00garbage", b'{"name": "a", "size": 2', b"", b"\x00" * 64],
)
async def test_garbage_bodies_get_400_problem(client: AsyncClient, garbage: bytes) -> None:
    response = await client.post(
        "/test/widgets", content=garbage, headers={"Content-Type": "application/json"}
    )
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert response.status_code == 400
    assert body["code"] in {"MALFORMED_JSON", "VALIDATION_FAILED"}


async def test_malformed_json_code(client: AsyncClient) -> None:
    response = await client.post(
        "/test/widgets", content=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert_problem(response.status_code, response.json(), 400, "MALFORMED_JSON")


async def test_validation_failure_points_at_the_field(client: AsyncClient) -> None:
    response = await client.post("/test/widgets", json={"name": "", "size": "big"})
    body = response.json()
    assert_problem(response.status_code, body, 400, "VALIDATION_FAILED")
    pointers = {error["pointer"] for error in body["errors"]}
    assert pointers == {"/name", "/size"}


async def test_wrong_json_type_is_a_validation_failure(client: AsyncClient) -> None:
    response = await client.post("/test/widgets", json=[1, 2, 3])
    assert_problem(response.status_code, response.json(), 400, "VALIDATION_FAILED")


async def test_unknown_route_is_404_problem(client: AsyncClient) -> None:
    response = await client.get("/v1/nothing-here")
    assert response.headers["content-type"] == PROBLEM
    assert_problem(response.status_code, response.json(), 404, "NOT_FOUND")


async def test_wrong_method_is_405_problem_with_allow(client: AsyncClient) -> None:
    response = await client.delete("/health")
    assert_problem(response.status_code, response.json(), 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["allow"]


async def test_domain_error_keeps_its_code_and_extensions(client: AsyncClient) -> None:
    response = await client.post("/test/conflict")
    body = response.json()
    assert_problem(response.status_code, body, 409, "WIDGET_EXISTS")
    assert body["widget_id"] == "w1"


async def test_unexpected_exception_is_generic_500_and_logged(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = await client.get("/test/crash")
    body = response.json()
    assert_problem(response.status_code, body, 500, "INTERNAL_ERROR")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert response.headers["x-request-id"] == body["request_id"]
    assert any("hunter2" in (record.exc_text or "") or record.exc_info for record in caplog.records)


async def test_request_id_is_echoed_or_generated(client: AsyncClient) -> None:
    mine = "req-" + uuid.uuid4().hex
    assert (await client.get("/health", headers={"X-Request-ID": mine})).headers["x-request-id"] == mine
    generated = (await client.get("/health")).headers["x-request-id"]
    assert len(generated) == 32
    unsafe = (await client.get("/health", headers={"X-Request-ID": "a b\tc"})).headers["x-request-id"]
    assert unsafe != "a b\tc"


async def test_problem_carries_the_request_id(client: AsyncClient) -> None:
    response = await client.get("/nope", headers={"X-Request-ID": "trace-123"})
    assert response.json()["request_id"] == "trace-123"
    assert response.headers["x-request-id"] == "trace-123"


async def test_security_headers(client: AsyncClient) -> None:
    headers = (await client.get("/health")).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["strict-transport-security"].startswith("max-age=")
    assert "default-src 'none'" in headers["content-security-policy"]
    error_headers = (await client.get("/test/crash")).headers
    assert error_headers["x-content-type-options"] == "nosniff"


async def test_body_over_the_limit_is_413(client: AsyncClient) -> None:
    big = b'{"name": "' + b"a" * 2_000_000 + b'", "size": 1}'
    response = await client.post("/test/widgets", content=big, headers={"Content-Type": "application/json"})
    assert_problem(response.status_code, response.json(), 413, "PAYLOAD_TOO_LARGE")


async def test_chunked_body_over_the_limit_is_413(client: AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"a" * 64_000

    response = await client.post(
        "/test/widgets", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(response.status_code, response.json(), 413, "PAYLOAD_TOO_LARGE")


async def test_chunked_body_under_the_limit_is_read(client: AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "ab",'
        yield b' "size": 3}'

    response = await client.post(
        "/test/widgets", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201


async def test_non_numeric_content_length_is_400() -> None:
    from aigos.server.middleware.body_limit import BodyLimitMiddleware

    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def never(scope: object, receive: object, send: object) -> None:
        raise AssertionError("the app must not be called")

    middleware = BodyLimitMiddleware(never, max_bytes=1024)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [(b"content-length", b"12abc")]}
    await middleware(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 400


async def test_cors_allows_configured_origins_only(settings_with_cors: FastAPI) -> None:
    async with (
        LifespanManager(settings_with_cors) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as http,
    ):
        preflight = await http.options(
            "/v1/info",
            headers={"Origin": "https://dash.example.com", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://dash.example.com"
        other = await http.get("/v1/info", headers={"Origin": "https://evil.example.net"})
        assert "access-control-allow-origin" not in other.headers


@pytest.fixture
def settings_with_cors(tmp_path: object) -> FastAPI:
    from pathlib import Path

    from aigos.server.app import create_app
    from tests.conftest import embedded_settings

    assert isinstance(tmp_path, Path)
    return create_app(embedded_settings(tmp_path / "cors", cors_origins="https://dash.example.com"))
