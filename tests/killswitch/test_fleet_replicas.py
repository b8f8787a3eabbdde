"""Fleet commands across two real server processes on one PostgreSQL and one Redis: a tenant PAUSE on one
makes the other's checks deny and reaches a stream on the other, a RESUME lifts it there too; and a fleet
command committed with its bookkeeping undone (its replica died) is finished by a replica that starts."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from aigos.core.commands import FleetCommand, sign_fleet_command, tenant_scope
from aigos.server.killswitch.service import command_signer
from tests.conftest import PG_ADMIN_DSN, SECRET_KEY
from tests.helpers import signup
from tests.killswitch.sse import Event, SseClient
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow


async def register(http: httpx.AsyncClient, owner: dict[str, str], name: str) -> dict[str, Any]:
    response = await http.post("/v1/agents/register", json={"name": name}, headers=owner)
    assert response.status_code == 201, response.text
    agent: dict[str, Any] = response.json()
    return agent


async def check_code(http: httpx.AsyncClient, agent: dict[str, Any]) -> str | None:
    response = await http.post(
        "/v1/policies/check",
        json={"action": "read", "resource": "db"},
        headers={"Authorization": f"Bearer {agent['identity_token']}"},
    )
    assert response.status_code == 200, response.text
    code: str | None = response.json()["code"]
    return code


async def eventually_code(http: httpx.AsyncClient, agent: dict[str, Any], wanted: bool) -> None:
    """Checks answer ``PAUSED`` (``wanted``) or not, once the other replica's change has arrived."""
    for _ in range(400):
        if (await check_code(http, agent) == "PAUSED") is wanted:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"checks never {'denied' if wanted else 'allowed'} again")


def fleet_of(event: Event | None) -> FleetCommand:
    assert event is not None, "the stream ended"
    assert event.event == "kill-switch-fleet"
    return FleetCommand.from_json(event.json)


# Each starts server processes, which on a busy two-core machine take most of the default limit alone.
@pytest.mark.timeout(300)
async def test_a_fleet_pause_on_one_replica_halts_the_other_and_a_resume_lifts_it(
    tmp_path: Path, replica_env: dict[str, str]
) -> None:
    one = ServerProcess(tmp_path / "one", replica_env)
    two = ServerProcess(tmp_path / "two", replica_env)
    try:
        await asyncio.to_thread(one.start)
        await asyncio.to_thread(two.start)
        async with (
            httpx.AsyncClient(base_url=one.base_url, timeout=10) as http_one,
            httpx.AsyncClient(base_url=two.base_url, timeout=10) as http_two,
        ):
            owner = (await signup(http_one, "Fleet")).headers
            agents = [await register(http_one, owner, f"agent-{n}") for n in range(3)]
            sse = SseClient(http_two)
            try:
                stream = await sse.open(agents[0]["identity_token"])
                for agent in agents:
                    assert await check_code(http_two, agent) != "PAUSED"
                paused = await http_one.post(
                    "/v1/kill-switch/trigger",
                    json={"all_agents": True, "command": "PAUSE", "reason": "incident"},
                    headers=owner,
                )
                assert paused.status_code == 201, paused.text
                command = fleet_of(await stream.next(within=10))
                assert (command.command_id, command.command) == (paused.json()["command_id"], "PAUSE")
                for agent in agents:
                    await eventually_code(http_two, agent, True)

                resumed = await http_one.post(
                    "/v1/kill-switch/trigger",
                    json={"all_agents": True, "command": "RESUME", "reason": "over"},
                    headers=owner,
                )
                assert resumed.status_code == 201, resumed.text
                assert fleet_of(await stream.next(within=10)).command == "RESUME"
                for agent in agents:
                    await eventually_code(http_two, agent, False)
            finally:
                await sse.aclose()
    finally:
        for server in (two, one):
            await asyncio.to_thread(server.__exit__, None, None, None)


@pytest.mark.timeout(300)
async def test_a_replica_that_starts_finishes_an_undone_bookkeeping(
    tmp_path: Path, replica_env: dict[str, str], pg_database: str
) -> None:
    one = ServerProcess(tmp_path / "one", replica_env)
    try:
        await asyncio.to_thread(one.start)
        async with httpx.AsyncClient(base_url=one.base_url, timeout=10) as http:
            handle = await signup(http, "Crashed")
            agents = [await register(http, handle.headers, f"agent-{n}") for n in range(3)]
        await asyncio.to_thread(one.__exit__, None, None, None)

        # What a replica that died between the trigger's commit and its bookkeeping leaves behind.
        tenant_id = handle.id
        now = datetime.now(UTC).replace(microsecond=0)
        command = sign_fleet_command(
            command_signer(SECRET_KEY.encode()),
            command_id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            scope=tenant_scope(),
            command="PAUSE",
            reason="left undone",
            issued_at=now,
            expires_at=now + timedelta(hours=1),
            nonce=secrets.token_hex(16),
            sequence=1,
        )
        connection = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + pg_database)
        try:
            await connection.execute(
                "INSERT INTO kill_switch_fleet_commands (id, tenant_id, scope_kind, command, reason, "
                "sequence, nonce, issued_at, expires_at, key_id, signature, issuer_kind, active) "
                "VALUES ($1, $2, 'tenant', 'PAUSE', $3, 1, $4, $5, $6, $7, $8, 'api_key', true)",
                uuid.UUID(command.command_id),
                uuid.UUID(tenant_id),
                command.reason,
                command.nonce,
                now,
                now + timedelta(hours=1),
                command.key_id,
                command.signature,
            )
        finally:
            await connection.close()

        two = ServerProcess(tmp_path / "two", replica_env)
        try:
            await asyncio.to_thread(two.start)
            async with httpx.AsyncClient(base_url=two.base_url, timeout=10) as http:
                # The halt holds from the start; the statuses follow once the bookkeeping is done.
                for agent in agents:
                    assert await check_code(http, agent) == "PAUSED"
                url = f"/v1/kill-switch/fleet-commands/{command.command_id}"
                for _ in range(400):
                    body = (await http.get(url, headers=handle.headers)).json()
                    if body["bookkeeping_done_at"] is not None:
                        break
                    await asyncio.sleep(0.05)
                assert (body["bookkeeping_done_at"] is not None, body["targeted"]) == (True, 3)
                for agent in agents:
                    got = await http.get(f"/v1/agents/{agent['agent_id']}", headers=handle.headers)
                    assert got.json()["status"] == "paused"
        finally:
            await asyncio.to_thread(two.__exit__, None, None, None)
    finally:
        await asyncio.to_thread(one.__exit__, None, None, None)
