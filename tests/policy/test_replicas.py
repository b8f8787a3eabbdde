"""Replicas on one PostgreSQL and one Redis: a policy change or a pause made through one is obeyed by the
other within a second, and a replica cut off from the bus refuses to answer from stale state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from aigos.server.app import create_app
from tests.conftest import REDIS_URL, embedded_settings, pg_url
from tests.helpers import TenantHandle, signup, signup_at
from tests.identity.helpers import bearer, register
from tests.policy.helpers import CAPS, check, create_policy
from tests.server_process import ServerProcess
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

#: How long a change made through one replica may take to be obeyed by the other.
PROPAGATION_LIMIT = 1.0


def within(limit: float, probe: Callable[[], bool]) -> bool:
    """Whether ``probe`` becomes true before ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    while True:
        if probe():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def test_a_change_through_one_process_is_obeyed_by_the_other(
    processes: tuple[ServerProcess, ServerProcess],
) -> None:
    one, two = processes
    admin = signup_at(one.base_url, "Replicas").headers
    agent = httpx.post(
        one.base_url + "/v1/agents/register", json={"name": "r", "capabilities": CAPS}, headers=admin
    ).json()
    token = bearer(agent["identity_token"])

    def decision_on_two(action: str = "export") -> dict[str, Any]:
        response = httpx.post(
            two.base_url + "/v1/policies/check", json={"action": action, "resource": "db"}, headers=token
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    assert decision_on_two()["allowed"] is True  # process two now holds the tenant's (empty) policy set

    created = httpx.post(
        one.base_url + "/v1/policies",
        json={"name": "no export", "rules": [{"effect": "deny", "actions": ["export"]}]},
        headers=admin,
    )
    assert created.status_code == 201
    assert within(PROPAGATION_LIMIT, lambda: decision_on_two()["code"] == "CUSTOM_DENIED")

    for command, expected in (("PAUSE", "PAUSED"), ("RESUME", None)):
        triggered = httpx.post(
            one.base_url + "/v1/kill-switch/trigger",
            json={"agent_id": agent["agent_id"], "command": command, "reason": "test"},
            headers=admin,
        )
        assert triggered.status_code == 201, triggered.text
        assert within(PROPAGATION_LIMIT, lambda e=expected: decision_on_two("read")["code"] == e)


@pytest.fixture
async def replicas(
    tmp_path: Path, pg_database: str, redis_prefix: str
) -> AsyncIterator[tuple[AsyncClient, AsyncClient, TcpProxy]]:
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
        yield client_a, client_b, proxy
    await proxy.stop()


async def test_a_replica_that_lost_the_bus_fails_closed_then_catches_up(
    replicas: tuple[AsyncClient, AsyncClient, TcpProxy],
) -> None:
    client_a, client_b, proxy = replicas
    tenant: TenantHandle = await signup(client_a, "Cut")
    # No budget: a check then needs nothing from Redis but the bus's word that nothing changed.
    agent = await register(client_a, tenant, capabilities={**CAPS, "max_budget": None})
    token = agent["identity_token"]
    assert (await check(client_b, token, "export"))["allowed"] is True

    proxy.sever()
    stale = await _check_until_stale(client_b, token)
    assert stale.status_code == 503
    assert stale.json()["code"] == "POLICY_STATE_STALE"
    assert stale.headers["retry-after"] == "1"
    # Meanwhile the other replica changes the policy: the cut-off one cannot hear it.
    await create_policy(client_a, tenant, rules=[{"effect": "deny", "actions": ["export"]}])

    proxy.restore()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = await client_b.post(
            "/v1/policies/check", json={"action": "export", "resource": "db"}, headers=bearer(token)
        )
        if response.status_code == 200:
            break
        await asyncio.sleep(0.01)
    assert response.status_code == 200
    # The first answer after reconnecting already reflects the change made while cut off.
    assert response.json()["code"] == "CUSTOM_DENIED"


async def test_a_simulation_on_a_replica_cut_off_from_the_bus_sees_the_saved_policies(
    replicas: tuple[AsyncClient, AsyncClient, TcpProxy],
) -> None:
    client_a, client_b, proxy = replicas
    tenant: TenantHandle = await signup(client_a, "Simulated")
    saved = await create_policy(
        client_a, tenant, rules=[{"id": "x", "effect": "deny", "actions": ["export"]}]
    )
    ask = {"agent": {}, "request": {"action": "export", "resource": "db"}}
    before = await client_b.post("/v1/policies/simulate", json=ask, headers=tenant.headers)
    assert before.json()["matched_rule"] == "x"  # the second replica now holds the compiled set

    # Changed through the first replica while the second cannot hear of it: a simulation there reuses its
    # compiled set only at the version the database holds.
    proxy.sever()
    changed = await client_a.put(
        f"/v1/policies/{saved['id']}",
        json={"name": "p", "rules": [{"id": "y", "effect": "deny", "actions": ["export"]}]},
        headers=tenant.headers,
    )
    assert changed.status_code == 200
    after = await client_b.post("/v1/policies/simulate", json=ask, headers=tenant.headers)
    assert after.status_code == 200, after.text
    assert (after.json()["matched_rule"], after.json()["policy_version"]) == ("y", 2)
    proxy.restore()


async def _check_until_stale(client: AsyncClient, token: str) -> httpx.Response:
    deadline = time.monotonic() + 10
    while True:
        response = await client.post(
            "/v1/policies/check", json={"action": "a", "resource": "r"}, headers=bearer(token)
        )
        if response.status_code != 200 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.01)  # in-process requests never yield: let the bus notice the cut
