"""Readiness follows the dependencies: 503 naming what is down, 200 again once it is back, no restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from aigos.server.app import create_app
from tests.conftest import embedded_settings, pg_url
from tests.tcp_proxy import TcpProxy


@pytest.fixture
async def proxies() -> AsyncIterator[tuple[TcpProxy, TcpProxy]]:
    pg = await TcpProxy("127.0.0.1", 5432).start()
    redis = await TcpProxy("127.0.0.1", 6379).start()
    yield pg, redis
    await pg.stop()
    await redis.stop()


@pytest.fixture
async def proxied_client(
    tmp_path: Path, pg_database: str, redis_prefix: str, proxies: tuple[TcpProxy, TcpProxy]
) -> AsyncIterator[AsyncClient]:
    pg, redis = proxies
    url = pg_url(pg_database).replace("127.0.0.1:5432", f"127.0.0.1:{pg.port}")
    settings = embedded_settings(
        tmp_path,
        database_url=url,
        redis_url=f"redis://127.0.0.1:{redis.port}/0",
        redis_prefix=redis_prefix,
        ready_timeout_seconds=1.0,
        database_timeout_seconds=1.0,
    )
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as http,
    ):
        yield http


async def test_database_down_then_back(
    proxied_client: AsyncClient, proxies: tuple[TcpProxy, TcpProxy]
) -> None:
    pg, _ = proxies
    assert (await proxied_client.get("/health/ready")).status_code == 200
    pg.sever()
    response = await proxied_client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert body["code"] == "NOT_READY"
    assert body["checks"] == {"database": "down", "bus": "up", "eventlog": "up"}
    assert "database (postgresql)" in body["detail"]
    assert (await proxied_client.get("/health")).status_code == 200
    pg.restore()
    assert (await proxied_client.get("/health/ready")).status_code == 200


async def test_redis_down_then_back(proxied_client: AsyncClient, proxies: tuple[TcpProxy, TcpProxy]) -> None:
    _, redis = proxies
    assert (await proxied_client.get("/health/ready")).status_code == 200
    redis.sever()
    # Still ready (the kill switch and the admin API work without Redis), and saying what is missing.
    response = await proxied_client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "checks": {"database": "up", "bus": "down", "eventlog": "up"},
    }
    redis.restore()
    response = await proxied_client.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
