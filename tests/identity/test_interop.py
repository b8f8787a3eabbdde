"""Interoperability: off-the-shelf OAuth and JWT libraries (Authlib, PyJWT) against a real server process.

The client learns every endpoint from ``/.well-known/oauth-authorization-server`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.httpx_client import OAuthError as AuthlibOAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey

from tests.helpers import signup_at
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("interop")
    with ServerProcess(workdir, {"AIGOS_LOG_LEVEL": "warning"}) as process:
        yield process


@pytest.fixture(scope="module")
def tenant(server: ServerProcess) -> dict[str, Any]:
    signed_up = signup_at(server.base_url, "Interop")
    return {"id": signed_up.id, "headers": signed_up.headers}


@pytest.fixture(scope="module")
def metadata(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(server.base_url + "/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert body["issuer"] == server.base_url
    return body


def new_agent(server: ServerProcess, tenant: dict[str, Any], name: str) -> dict[str, Any]:
    response = httpx.post(
        server.base_url + "/v1/agents/register",
        json={"name": name, "capabilities": {"tools": ["web_*"], "max_budget": 5}},
        headers=tenant["headers"],
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def verify_with_pyjwt(token: str, metadata: dict[str, Any], tenant_id: str) -> dict[str, Any]:
    """Check the access token the way a resource server would, from the discovered JWKS."""
    signing_key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        signing_key.key,
        algorithms=["ES256"],
        audience=tenant_id,
        issuer=metadata["issuer"],
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    return claims


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_client_credentials_introspect_revoke(
    server: ServerProcess, tenant: dict[str, Any], metadata: dict[str, Any], method: str
) -> None:
    assert method in metadata["token_endpoint_auth_methods_supported"]
    agent = new_agent(server, tenant, f"authlib-{method}")
    async with AsyncOAuth2Client(
        client_id=agent["client_id"],
        client_secret=agent["client_secret"],
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
        scope="agent policies:check",
    ) as oauth:
        token = await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        assert token["token_type"].lower() == "bearer"
        assert token["scope"] == "agent policies:check"
        assert token["expires_in"] > 0
        claims = verify_with_pyjwt(token["access_token"], metadata, tenant["id"])
        assert claims["sub"] == claims["client_id"] == agent["client_id"]
        assert claims["scope"] == "agent policies:check"

        # Authlib puts the token on requests itself.
        heartbeat = server.base_url + f"/v1/agents/{agent['agent_id']}/heartbeat"
        assert (await oauth.post(heartbeat)).status_code == 200

        introspected = await oauth.introspect_token(
            metadata["introspection_endpoint"], token=token["access_token"]
        )
        assert introspected.status_code == 200, introspected.text
        assert introspected.json()["active"] is True
        assert introspected.json()["sub"] == agent["client_id"]

        revoked = await oauth.revoke_token(
            metadata["revocation_endpoint"], token=token["access_token"], token_type_hint="access_token"
        )
        assert revoked.status_code == 200, revoked.text
        after = await oauth.introspect_token(metadata["introspection_endpoint"], token=token["access_token"])
        assert after.json() == {"active": False}
        refused = await oauth.post(heartbeat)
        assert refused.status_code == 401
        assert refused.json()["code"] == "TOKEN_REVOKED"


async def test_authlib_reports_oauth_errors(
    server: ServerProcess, tenant: dict[str, Any], metadata: dict[str, Any]
) -> None:
    agent = new_agent(server, tenant, "authlib-errors")
    async with AsyncOAuth2Client(client_id=agent["client_id"], client_secret="aigos_cs_wrong") as oauth:
        with pytest.raises(AuthlibOAuthError) as wrong_secret:
            await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        assert wrong_secret.value.error == "invalid_client"
    async with AsyncOAuth2Client(client_id=agent["client_id"], client_secret=agent["client_secret"]) as oauth:
        with pytest.raises(AuthlibOAuthError) as bad_scope:
            await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials", scope="root")
        assert bad_scope.value.error == "invalid_scope"


async def test_authlib_private_key_jwt(
    server: ServerProcess, tenant: dict[str, Any], metadata: dict[str, Any]
) -> None:
    assert "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"]
    assert "ES256" in metadata["token_endpoint_auth_signing_alg_values_supported"]
    agent = new_agent(server, tenant, "authlib-pkjwt")
    key = ECKey.generate_key("P-256", private=True)
    async with httpx.AsyncClient() as http:
        registered = await http.post(
            server.base_url + f"/v1/agents/{agent['agent_id']}/credentials",
            json={"name": "authlib", "public_jwk": key.as_dict(private=False)},
            headers=tenant["headers"],
        )
    assert registered.status_code == 201, registered.text
    assert registered.json()["jwk_thumbprint"] == key.thumbprint()

    async with AsyncOAuth2Client(
        client_id=agent["client_id"], client_secret=key, token_endpoint_auth_method="private_key_jwt"
    ) as oauth:
        # Authlib's defaults: aud = the token endpoint, a fresh jti, a one-hour lifetime.
        oauth.register_client_auth_method(PrivateKeyJWT(metadata["token_endpoint"], alg="ES256"))
        first = await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        second = await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    for token in (first, second):
        claims = verify_with_pyjwt(token["access_token"], metadata, tenant["id"])
        assert claims["sub"] == agent["client_id"]
    assert first["access_token"] != second["access_token"]


async def test_jwks_and_discovery_with_pyjwt(
    server: ServerProcess, tenant: dict[str, Any], metadata: dict[str, Any]
) -> None:
    agent = new_agent(server, tenant, "pyjwt")
    # The registration-time identity token verifies the same way.
    claims = verify_with_pyjwt(agent["identity_token"], metadata, tenant["id"])
    assert claims["sub"] == agent["agent_id"]
    # Another audience or issuer is refused by the library, as a resource server would.
    key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(agent["identity_token"]).key
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(agent["identity_token"], key, algorithms=["ES256"], audience="someone-else")
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(
            agent["identity_token"],
            key,
            algorithms=["ES256"],
            audience=tenant["id"],
            issuer="https://x.example",
        )
    async with httpx.AsyncClient() as http:
        openid = (await http.get(server.base_url + "/.well-known/openid-configuration")).json()
    assert openid == metadata
