"""A 2xx means committed: no success leaves the server before its transaction is durable.

The per-request transaction used to commit after the response had been sent, so a client (or another
replica) acting on a 2xx could still see the old state, and a commit that failed had already been
reported as a success.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from tests.conftest import ADMIN_TOKEN, PG_ADMIN_DSN
from tests.helpers import bearer, signup
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow

REVOCATIONS = 50


async def owner_key(http: AsyncClient, slug: str = "acme") -> str:
    # The free plan's per-key rate limit would stop the loops below.
    signed_up = await signup(
        http, slug.title(), slug=slug, plan_tier="enterprise", headers=bearer(ADMIN_TOKEN)
    )
    return signed_up.key


async def test_a_key_answered_201_is_accepted_and_one_answered_204_refused_at_once(
    client: AsyncClient,
) -> None:
    owner = bearer(await owner_key(client))
    for _ in range(10):
        created = await client.post(
            "/v1/api-keys", json={"name": "ci", "scopes": ["agents:read"]}, headers=owner
        )
        assert created.status_code == 201, created.text
        key = created.json()
        used = await client.get("/v1/agents", headers=bearer(key["key"]))
        assert used.status_code == 200, used.text
        revoked = await client.delete(f"/v1/api-keys/{key['id']}", headers=owner)
        assert revoked.status_code == 204, revoked.text
        refused = await client.get("/v1/agents", headers=bearer(key["key"]))
        assert refused.status_code == 401, refused.text


@pytest.fixture
def replicas(tmp_path: Path, replica_env: dict[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # The owner key creates and revokes a hundred keys in a few seconds: past the default per-key limit.
    env = {
        **replica_env,
        "AIGOS_ISSUER": "https://aigos.example.com",
        "AIGOS_DEFAULT_RATE_LIMIT_RPM": "100000",
    }
    with ServerProcess(tmp_path / "one", env) as one, ServerProcess(tmp_path / "two", env) as two:
        yield one, two


async def test_a_key_revoked_on_one_replica_is_refused_by_the_other_every_time(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    one, two = replicas
    async with (
        httpx.AsyncClient(base_url=one.base_url) as first,
        httpx.AsyncClient(base_url=two.base_url) as second,
    ):
        owner = bearer(await owner_key(first, "replicas"))
        accepted_after_revocation = 0
        refused_after_creation = 0
        for _ in range(REVOCATIONS):
            created = await first.post(
                "/v1/api-keys", json={"name": "ci", "scopes": ["agents:read"]}, headers=owner
            )
            assert created.status_code == 201, created.text
            key = created.json()
            if (await second.get("/v1/agents", headers=bearer(key["key"]))).status_code != 200:
                refused_after_creation += 1
            assert (await first.delete(f"/v1/api-keys/{key['id']}", headers=owner)).status_code == 204
            if (await second.get("/v1/agents", headers=bearer(key["key"]))).status_code != 401:
                accepted_after_revocation += 1
        assert (refused_after_creation, accepted_after_revocation) == (0, 0)


@pytest.fixture
async def failing_commits(pg_database: str) -> None:
    """Make every commit that inserted an API key fail, as a deferred constraint does at COMMIT."""
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + pg_database
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            """
            CREATE FUNCTION test_refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.name = 'doomed' THEN
                    RAISE EXCEPTION 'refused at commit';
                END IF;
                RETURN NEW;
            END $$;
            CREATE CONSTRAINT TRIGGER test_refuse_at_commit AFTER INSERT ON api_keys
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_refuse_at_commit();
            """
        )
    finally:
        await connection.close()


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
async def test_a_commit_that_fails_is_never_reported_as_a_success(
    failing_commits: None, app: FastAPI, client: AsyncClient
) -> None:
    owner = bearer(await owner_key(client))
    failed = await client.post(
        "/v1/api-keys", json={"name": "doomed", "scopes": ["agents:read"]}, headers=owner
    )
    assert failed.status_code >= 500, failed.text
    assert failed.headers["content-type"] == "application/problem+json"
    assert failed.json()["code"] == "INTERNAL_ERROR"
    keys = await client.get("/v1/api-keys", headers=owner)
    assert "doomed" not in {key["name"] for key in keys.json()["data"]}
    # The server goes on: the next request commits as usual.
    kept = await client.post("/v1/api-keys", json={"name": "kept", "scopes": ["agents:read"]}, headers=owner)
    assert kept.status_code == 201, kept.text


async def test_an_agent_registered_on_one_replica_gets_a_token_from_the_other_at_once(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    one, two = replicas
    async with (
        httpx.AsyncClient(base_url=one.base_url) as first,
        httpx.AsyncClient(base_url=two.base_url) as second,
    ):
        owner = bearer(await owner_key(first, "registrations"))
        refused = 0
        for n in range(20):
            registered = await first.post("/v1/agents/register", json={"name": f"agent-{n}"}, headers=owner)
            assert registered.status_code == 201, registered.text
            agent = registered.json()
            token = await second.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(agent["client_id"], agent["client_secret"]),
            )
            refused += token.status_code != 200
        assert refused == 0
