"""Responses that carry a new secret must never be kept by a browser or a proxy cache: `no-store`."""

from __future__ import annotations

from httpx import AsyncClient, Response

from tests.helpers import TenantHandle


def assert_not_stored(response: Response) -> None:
    assert response.headers.get_list("cache-control") == ["no-store"], response.headers


async def test_responses_with_new_secrets_are_not_stored(client: AsyncClient, tenant_a: TenantHandle) -> None:
    key = await client.post(
        "/v1/api-keys", json={"name": "ci", "scopes": ["agents:read"]}, headers=tenant_a.headers
    )
    assert key.status_code == 201, key.text
    assert key.json()["key"]
    assert_not_stored(key)

    registered = await client.post("/v1/agents/register", json={"name": "worker"}, headers=tenant_a.headers)
    assert registered.status_code == 201, registered.text
    agent = registered.json()
    assert agent["client_secret"]
    assert agent["identity_token"]
    assert_not_stored(registered)

    credential = await client.post(
        f"/v1/agents/{agent['agent_id']}/credentials", json={"name": "second"}, headers=tenant_a.headers
    )
    assert credential.status_code == 201, credential.text
    assert credential.json()["client_secret"]
    assert_not_stored(credential)

    token = await client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": agent["client_id"],
            "client_secret": agent["client_secret"],
        },
    )
    assert token.status_code == 200, token.text
    assert_not_stored(token)

    # Reads and refusals of the API are not stored either.
    assert_not_stored(await client.get("/v1/api-keys", headers=tenant_a.headers))
    assert_not_stored(await client.get("/v1/api-keys"))


async def test_public_documents_keep_their_own_caching(client: AsyncClient) -> None:
    jwks = await client.get("/.well-known/jwks.json")
    assert jwks.headers.get_list("cache-control") == ["public, max-age=300"]
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration", "/docs"):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert "no-store" not in response.headers.get("cache-control", ""), path
