"""Signing-key rotation without downtime: old tokens keep verifying, replicas learn of it, keys are sealed."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from click.testing import CliRunner
from cryptography.exceptions import InvalidTag
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import select, update

from aigos.cli import app as cli_app
from aigos.server.app import create_app
from aigos.server.config import Settings
from aigos.server.db.types import utcnow
from aigos.server.identity.keys import KeyEncryption
from aigos.server.identity.models import SigningKey
from aigos.server.identity.state import publish_keys_changed
from aigos.server.identity.tokens import VerifiedCache
from aigos.server.runtime import Runtime
from tests.conftest import REDIS_URL, SECRET_KEY, embedded_settings, pg_url
from tests.helpers import TenantHandle, signup

KEYS = "/v1/admin/signing-keys"


def kid_of(token: str) -> str:
    """The ``kid`` header of a JWS."""
    head = token.split(".", 1)[0]
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return str(header["kid"])


async def register(client: AsyncClient, tenant: TenantHandle) -> dict[str, Any]:
    """A new agent with a client secret and its first token."""
    response = await client.post("/v1/agents/register", json={"name": "bot"}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def client_token(client: AsyncClient, agent: dict[str, Any]) -> str:
    """A token from the token endpoint (client credentials)."""
    response = await client.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(agent["client_id"], agent["client_secret"]),
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def heartbeat(client: AsyncClient, agent_id: str, token: str) -> int:
    """The status of the agent's heartbeat with ``token``."""
    response = await client.post(
        f"/v1/agents/{agent_id}/heartbeat", headers={"Authorization": f"Bearer {token}"}
    )
    return response.status_code


async def jwks_kids(client: AsyncClient) -> set[str]:
    """The key ids the JWKS publishes."""
    return {key["kid"] for key in (await client.get("/.well-known/jwks.json")).json()["keys"]}


async def eventually(check: Any, within: float = 5.0) -> None:
    """Wait until the coroutine function ``check`` returns true (at most ``within`` seconds)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def runtime_of(app: FastAPI) -> Runtime:
    """The started app's runtime."""
    runtime: Runtime = app.state.runtime
    return runtime


async def test_rotation_keeps_old_tokens_valid_and_signs_new_ones(
    app: FastAPI, client: AsyncClient, tenant_a: TenantHandle, admin_headers: dict[str, str]
) -> None:
    agent = await register(client, tenant_a)
    old_token = agent["identity_token"]
    old_kid = kid_of(old_token)
    listed = await client.get(KEYS, headers=admin_headers)
    assert listed.status_code == 200, listed.text
    assert listed.json()["active_kid"] == old_kid
    assert "private" not in listed.text
    assert '"d"' not in listed.text

    rotated = await client.post(f"{KEYS}/rotate", headers=admin_headers)
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    new_kid = body["active_kid"]
    assert new_kid != old_kid
    by_kid = {key["kid"]: key for key in body["keys"]}
    assert by_kid[new_kid]["status"] == "active"
    assert by_kid[new_kid]["signing"] is True
    assert by_kid[old_kid]["status"] == "retired"
    assert by_kid[old_kid]["published"] is True
    assert by_kid[old_kid]["retired_at"] is not None
    assert by_kid[old_kid]["publish_until"] is not None

    # Signed before the rotation, first verified after it.
    assert await heartbeat(client, agent["agent_id"], old_token) == 200
    new_token = await client_token(client, agent)
    assert kid_of(new_token) == new_kid
    assert await jwks_kids(client) == {old_kid, new_kid}

    # Once its last token has expired the retired key leaves the JWKS (announced as after a rotation).
    runtime = runtime_of(app)
    async with runtime.database.session() as session:
        await session.execute(
            update(SigningKey)
            .where(SigningKey.kid == old_kid)
            .values(publish_until=utcnow() - timedelta(seconds=1))
        )
    await publish_keys_changed(runtime.bus)

    async def old_key_gone() -> bool:
        return await jwks_kids(client) == {new_kid}

    await eventually(old_key_gone)
    runtime.agent_auth.cache = VerifiedCache()  # forget that the old token verified once
    assert await heartbeat(client, agent["agent_id"], old_token) == 401
    assert await heartbeat(client, agent["agent_id"], new_token) == 200
    listed_after = (await client.get(KEYS, headers=admin_headers)).json()
    assert {key["kid"]: key["published"] for key in listed_after["keys"]} == {old_kid: False, new_kid: True}


async def test_tenant_keys_are_refused(
    client: AsyncClient, tenant_a: TenantHandle, admin_headers: dict[str, str]
) -> None:
    before = (await client.get(KEYS, headers=admin_headers)).json()["active_kid"]
    for method, path in (("GET", KEYS), ("POST", f"{KEYS}/rotate")):
        response = await client.request(method, path, headers=tenant_a.headers)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "PLATFORM_ONLY"
        anonymous = await client.request(method, path)
        assert anonymous.status_code == 401, anonymous.text
    assert (await client.get(KEYS, headers=admin_headers)).json()["active_kid"] == before


async def test_private_keys_are_encrypted_at_rest(
    app: FastAPI, client: AsyncClient, settings: Settings, admin_headers: dict[str, str]
) -> None:
    assert (await client.post(f"{KEYS}/rotate", headers=admin_headers)).status_code == 200
    async with runtime_of(app).database.session() as session:
        rows = (await session.scalars(select(SigningKey))).all()
    assert len(rows) == 2
    for row in rows:
        stored = row.private_key_encrypted
        assert stored.startswith("v1.")
        assert "BEGIN" not in stored
        assert "PRIVATE" not in stored
        assert "-----" not in json.dumps(row.public_jwk)
        plain = KeyEncryption(settings.pepper).decrypt(stored, row.kid.encode())
        assert plain.startswith(b"-----BEGIN PRIVATE KEY-----")
        with pytest.raises(InvalidTag):
            KeyEncryption(b"another-server-secret-0123456789abcdef").decrypt(stored, row.kid.encode())
        with pytest.raises(InvalidTag):  # the ciphertext is bound to its key id
            KeyEncryption(settings.pepper).decrypt(stored, b"another-kid")


@pytest.fixture
def replica_settings(tmp_path: Path, pg_database: str, redis_prefix: str) -> Settings:
    """Replicas share a database and the Redis bus (the embedded bus is one process's): PostgreSQL only."""
    return embedded_settings(
        tmp_path, database_url=pg_url(pg_database), redis_url=REDIS_URL, redis_prefix=redis_prefix
    )


async def test_other_replicas_learn_of_a_rotation(
    replica_settings: Settings, admin_headers: dict[str, str]
) -> None:
    settings = replica_settings
    first, second = create_app(settings), create_app(settings)
    async with (
        LifespanManager(first) as one,
        LifespanManager(second) as two,
        AsyncClient(transport=ASGITransport(app=one.app), base_url="http://testserver") as client_one,
        AsyncClient(transport=ASGITransport(app=two.app), base_url="http://testserver") as client_two,
    ):
        tenant = await signup(client_one, "Gamma")
        agent = await register(client_one, tenant)
        old_kid = kid_of(agent["identity_token"])
        assert kid_of(await client_token(client_two, agent)) == old_kid
        rotated = await client_one.post(f"{KEYS}/rotate", headers=admin_headers)
        new_kid = rotated.json()["active_kid"]

        async def second_signs_with_new_key() -> bool:
            return runtime_of(second).keys.active.kid == new_kid

        await eventually(second_signs_with_new_key)
        assert kid_of(await client_token(client_two, agent)) == new_kid
        assert await jwks_kids(client_two) == {old_kid, new_kid}
        assert await heartbeat(client_two, agent["agent_id"], agent["identity_token"]) == 200


async def _served_keys(data_dir: Path) -> tuple[str, set[str]]:
    """What a server started on ``data_dir`` signs with and publishes."""
    app = create_app(embedded_settings(data_dir))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as client,
    ):
        return runtime_of(app).keys.active.kid, await jwks_kids(client)


def test_cli_rotates_the_keys_of_an_embedded_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIGOS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AIGOS_SECRET_KEY", SECRET_KEY)
    runner = CliRunner()
    listed = runner.invoke(cli_app, ["keys", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    first = json.loads(listed.stdout)
    assert [key["status"] for key in first["keys"]] == ["active"]

    rotated = runner.invoke(cli_app, ["keys", "rotate", "--json"])
    assert rotated.exit_code == 0, rotated.output
    body = json.loads(rotated.stdout)
    assert body["active_kid"] != first["active_kid"]
    assert {key["kid"]: key["status"] for key in body["keys"]} == {
        body["active_kid"]: "active",
        first["active_kid"]: "retired",
    }
    assert body["servers_notified"] == 0  # the in-process bus of a command reaches no server

    text = runner.invoke(cli_app, ["keys", "rotate"])
    assert text.exit_code == 0, text.output
    assert "rotated: new tokens are signed with" in text.stdout
    assert "restart" in text.stderr  # the embedded-mode note
    active = text.stdout.split("signed with ", 1)[1].split()[0]

    signing, published = asyncio.run(_served_keys(tmp_path))
    assert signing == active
    assert published == {active, body["active_kid"], first["active_kid"]}
