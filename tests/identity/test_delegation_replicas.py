"""A replica cut off from the bus still refuses a delegation whose delegator stopped: it asks the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from aigos.server.app import create_app
from tests.conftest import REDIS_URL, embedded_settings, pg_url
from tests.helpers import signup
from tests.identity.helpers import access_token, create, exchange, heartbeat, register
from tests.tcp_proxy import TcpProxy

Replicas = tuple[AsyncClient, AsyncClient, FastAPI, TcpProxy]


@pytest.fixture
async def replicas(tmp_path: Path, pg_database: str, redis_prefix: str) -> AsyncIterator[Replicas]:
    """Two in-process replicas; the second reaches Redis through a proxy the test can cut."""
    proxy = await TcpProxy("127.0.0.1", 6379).start()
    common = {"database_url": pg_url(pg_database), "redis_prefix": redis_prefix}
    first = create_app(embedded_settings(tmp_path / "a", redis_url=REDIS_URL, **common))
    second = create_app(
        embedded_settings(tmp_path / "b", redis_url=f"redis://127.0.0.1:{proxy.port}/0", **common)
    )
    async with (
        LifespanManager(first) as a,
        LifespanManager(second) as b,
        AsyncClient(transport=ASGITransport(app=a.app), base_url="http://testserver") as client_a,
        AsyncClient(transport=ASGITransport(app=b.app), base_url="http://testserver") as client_b,
    ):
        yield client_a, client_b, second, proxy
    await proxy.stop()


async def _cut_off(app: FastAPI) -> None:
    deadline = time.monotonic() + 10
    while app.state.runtime.identity.live:
        assert time.monotonic() < deadline, "the replica never noticed the lost bus"
        await asyncio.sleep(0.01)


async def test_a_replica_without_the_bus_refuses_from_the_database(replicas: Replicas) -> None:
    client_a, client_b, second, proxy = replicas
    tenant = await signup(client_a, "Cut")
    parent = await register(client_a, tenant, name="parent")
    child = await create(
        client_a, tenant, name="child", parent_id=parent["agent_id"], capabilities={"max_budget": 1}
    )
    token = await access_token(client_a, parent)
    child_token = (await exchange(client_a, token, child["id"])).json()["access_token"]
    other_token = (await exchange(client_a, await access_token(client_a, parent), child["id"])).json()[
        "access_token"
    ]
    assert (await heartbeat(client_b, child["id"], child_token)).status_code == 200

    proxy.sever()
    await _cut_off(second)
    auth = (parent["client_id"], parent["client_secret"])
    assert (await client_a.post("/oauth2/revoke", data={"token": token}, auth=auth)).status_code == 200
    revoked = await heartbeat(client_b, child["id"], child_token)
    assert (revoked.status_code, revoked.json()["code"]) == (401, "TOKEN_REVOKED")
    assert (await heartbeat(client_b, child["id"], other_token)).status_code == 200
    suspended = await client_a.post(f"/v1/agents/{parent['agent_id']}/suspend", headers=tenant.headers)
    assert suspended.status_code == 200
    refused = await heartbeat(client_b, child["id"], other_token)
    assert (refused.status_code, refused.json()["code"]) == (401, "DELEGATOR_SUSPENDED")
