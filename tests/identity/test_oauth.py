"""The OAuth 2.0 endpoints as the RFCs describe them: token, introspection, revocation, discovery, JWKS,
and client authentication by secret (Basic, post) and by signed assertion (``private_key_jwt``)."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import jwt
import pytest
from httpx import AsyncClient

from tests.helpers import TenantHandle
from tests.identity.helpers import (
    CAPABILITIES,
    ISSUER,
    TOKEN_ENDPOINT,
    SigningClient,
    access_token,
    client_token,
    oauth_error,
    register,
    verified,
)

DEFAULT_SCOPE = "agent policies:check telemetry:write killswitch:listen"


# -- the token endpoint -----------------------------------------------------------------------------------


async def test_client_credentials_token_is_an_rfc9068_jwt(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    response = await client_token(client, reg["client_id"], reg["client_secret"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    # Asked for no scope, an agent gets the default one.
    assert body["scope"] == DEFAULT_SCOPE
    claims = await verified(client, body["access_token"], tenant_a.id)
    assert claims["sub"] == claims["client_id"] == reg["agent_id"]
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["scope"] == DEFAULT_SCOPE
    assert claims["aigos:capabilities"] == CAPABILITIES
    assert claims["aigos:version"] == "1.0"
    other = await access_token(client, reg)
    assert jwt.decode(other, options={"verify_signature": False})["jti"] != claims["jti"]


async def test_client_secret_post(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    form = {
        "grant_type": "client_credentials",
        "client_id": reg["client_id"],
        "client_secret": reg["client_secret"],
    }
    response = await client.post("/oauth2/token", data=form)
    assert response.status_code == 200, response.text
    wrong = await client.post("/oauth2/token", data={**form, "client_secret": "aigos_cs_nope"})
    oauth_error(wrong, 401, "invalid_client")
    # Without Basic there is no Basic challenge.
    assert "basic" not in wrong.headers.get("www-authenticate", "").lower()
    missing_id = await client.post("/oauth2/token", data={**form, "client_id": ""})
    oauth_error(missing_id, 401, "invalid_client")


async def test_basic_credentials_are_form_urlencoded(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    # RFC 6749 2.3.1: client id and secret are form-urlencoded before Base64; our ids and secrets only use
    # unreserved characters, but an encoded form of them must work too.
    encoded = "".join(f"%{ord(c):02X}" for c in reg["client_id"])
    raw = base64.b64encode(f"{encoded}:{reg['client_secret']}".encode()).decode()
    response = await client.post(
        "/oauth2/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {raw}"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("agent", "agent"),
        ("policies:check agent", "policies:check agent"),
        ("agent agent", "agent"),
        ("  agent   telemetry:write ", "agent telemetry:write"),
    ],
)
async def test_requested_scopes(
    client: AsyncClient, tenant_a: TenantHandle, scope: str, expected: str
) -> None:
    reg = await register(client, tenant_a)
    response = await client_token(client, reg["client_id"], reg["client_secret"], scope=scope)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == expected
    assert (
        jwt.decode(response.json()["access_token"], options={"verify_signature": False})["scope"] == expected
    )


@pytest.mark.parametrize("scope", ["admin", "agent admin", "agents:write", "tenant:read"])
async def test_unknown_scope_is_invalid_scope(
    client: AsyncClient, tenant_a: TenantHandle, scope: str
) -> None:
    reg = await register(client, tenant_a)
    response = await client_token(client, reg["client_id"], reg["client_secret"], scope=scope)
    oauth_error(response, 400, "invalid_scope")


async def test_grant_type_errors(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    auth = (reg["client_id"], reg["client_secret"])
    for grant in (
        "password",
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ):
        response = await client.post("/oauth2/token", data={"grant_type": grant}, auth=auth)
        oauth_error(response, 400, "unsupported_grant_type")
    oauth_error(
        await client.post("/oauth2/token", data={"scope": "agent"}, auth=auth), 400, "invalid_request"
    )
    oauth_error(
        await client.post("/oauth2/token", data={"grant_type": ""}, auth=auth), 400, "invalid_request"
    )


async def test_only_form_bodies_are_read(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    auth = (reg["client_id"], reg["client_secret"])
    as_json = await client.post("/oauth2/token", json={"grant_type": "client_credentials"}, auth=auth)
    oauth_error(as_json, 400, "invalid_request")
    as_text = await client.post(
        "/oauth2/token",
        content=b"grant_type=client_credentials",
        headers={"Content-Type": "text/plain"},
        auth=auth,
    )
    oauth_error(as_text, 400, "invalid_request")
    empty = await client.post("/oauth2/token", auth=auth)
    oauth_error(empty, 400, "invalid_request")
    multipart = await client.post(
        "/oauth2/token", files={"grant_type": (None, "client_credentials")}, auth=auth
    )
    oauth_error(multipart, 400, "invalid_request")
    for path in ("/oauth2/introspect", "/oauth2/revoke"):
        oauth_error(await client.post(path, json={"token": "x"}, auth=auth), 400, "invalid_request")
    # With a charset parameter the form is still a form.
    with_charset = await client.post(
        "/oauth2/token",
        content=b"grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
        auth=auth,
    )
    assert with_charset.status_code == 200, with_charset.text


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=client_credentials&grant_type=client_credentials",
        b"grant_type=client_credentials&scope=agent&scope=agent",
        b"grant_type=client_credentials&client_id=a&client_id=a",
    ],
)
async def test_repeated_parameters_are_refused(
    client: AsyncClient, tenant_a: TenantHandle, body: bytes
) -> None:
    reg = await register(client, tenant_a)
    response = await client.post(
        "/oauth2/token",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=(reg["client_id"], reg["client_secret"]),
    )
    oauth_error(response, 400, "invalid_request")


async def test_invalid_client_with_basic_gets_a_basic_challenge(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    for client_id, secret in (
        (reg["client_id"], "aigos_cs_wrong"),
        (str(uuid.uuid4()), reg["client_secret"]),
        ("not-a-uuid", reg["client_secret"]),
        ("", ""),
    ):
        response = await client_token(client, client_id, secret)
        oauth_error(response, 401, "invalid_client")
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    for header in ("Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode()):
        response = await client.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, headers={"Authorization": header}
        )
        oauth_error(response, 401, "invalid_client")
        assert response.headers["WWW-Authenticate"].startswith("Basic")


async def test_no_client_authentication(client: AsyncClient) -> None:
    response = await client.post("/oauth2/token", data={"grant_type": "client_credentials"})
    oauth_error(response, 401, "invalid_client")
    bearer = await client.post(
        "/oauth2/token", data={"grant_type": "client_credentials"}, headers={"Authorization": "Bearer x"}
    )
    oauth_error(bearer, 401, "invalid_client")


async def test_two_authentication_methods_at_once_are_refused(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    signer = SigningClient(reg["agent_id"])
    await signer.register_key(client, tenant_a)
    auth = (reg["client_id"], reg["client_secret"])
    both = await client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": reg["client_id"],
            "client_secret": reg["client_secret"],
        },
        auth=auth,
    )
    oauth_error(both, 400, "invalid_request")
    assertion_and_basic = await client.post("/oauth2/token", data=signer.form(), auth=auth)
    oauth_error(assertion_and_basic, 400, "invalid_request")
    assertion_and_post = await client.post(
        "/oauth2/token", data=signer.form(client_id=reg["client_id"], client_secret=reg["client_secret"])
    )
    oauth_error(assertion_and_post, 400, "invalid_request")
    # Basic with a different client_id in the form is refused as well.
    other = await client.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "client_id": str(uuid.uuid4())}, auth=auth
    )
    oauth_error(other, 400, "invalid_request")
    same = await client.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "client_id": reg["client_id"]}, auth=auth
    )
    assert same.status_code == 200, same.text


# -- private_key_jwt --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["EC", "OKP"])
async def test_private_key_jwt(client: AsyncClient, tenant_a: TenantHandle, kind: str) -> None:
    reg = await register(client, tenant_a)
    signer = SigningClient(reg["agent_id"], kind)
    await signer.register_key(client, tenant_a)
    for audience in (ISSUER, TOKEN_ENDPOINT, [TOKEN_ENDPOINT, "https://other.example"]):
        response = await client.post("/oauth2/token", data=signer.form(signer.assertion(aud=audience)))
        assert response.status_code == 200, response.text
        claims = await verified(client, response.json()["access_token"], tenant_a.id)
        assert claims["sub"] == reg["agent_id"]
    # client_id may be sent beside the assertion, when it agrees.
    named = await client.post("/oauth2/token", data=signer.form(client_id=reg["agent_id"]))
    assert named.status_code == 200, named.text


async def test_private_key_jwt_refusals(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    signer = SigningClient(reg["agent_id"])
    key = await signer.register_key(client, tenant_a)
    now = int(time.time())

    async def refused(form: dict[str, str], error: str = "invalid_client", status: int = 401) -> None:
        oauth_error(await client.post("/oauth2/token", data=form), status, error)

    await refused(signer.form(signer.assertion(aud="https://elsewhere.example/oauth2/token")))
    await refused(signer.form(signer.assertion(aud=ISSUER + "/oauth2/introspect")))
    await refused(signer.form(signer.assertion(aud=None)))
    # Expired (beyond the leeway), not yet valid, or living too long.
    await refused(signer.form(signer.assertion(iat=now - 600, exp=now - 300)))
    await refused(signer.form(signer.assertion(nbf=now + 600)))
    await refused(signer.form(signer.assertion(exp=now + 86_400)))
    await refused(signer.form(signer.assertion(exp=None)))
    await refused(signer.form(signer.assertion(jti=None)))
    # iss and sub must both be the client.
    other = await register(client, tenant_a, name="other")
    await refused(signer.form(signer.assertion(sub=other["agent_id"])))
    await refused(signer.form(signer.assertion(iss=other["agent_id"])))
    await refused(signer.form(signer.assertion(), client_id=other["agent_id"]))
    # Signed by a key nobody registered; for an unknown client; not a JWT at all; unsigned.
    stranger = SigningClient(reg["agent_id"])
    await refused(stranger.form())
    ghost = SigningClient(str(uuid.uuid4()))
    await refused(ghost.form())
    await refused(signer.form("not.a.jwt"))
    await refused(signer.form("garbage"))
    unsigned = jwt.encode(
        {"iss": reg["agent_id"], "sub": reg["agent_id"], "aud": TOKEN_ENDPOINT, "exp": now + 60, "jti": "u"},
        None,
        algorithm="none",
    )
    await refused(signer.form(unsigned))
    # An agent of another tenant with no key at all.
    foreign = await register(client, tenant_b)
    await refused(SigningClient(foreign["agent_id"]).form())
    # The assertion type must be the JWT bearer one.
    bad_type = signer.form()
    bad_type["client_assertion_type"] = "urn:example:other"
    await refused(bad_type, "invalid_request", 400)
    # A revoked key stops at once.
    fresh = signer.form()
    deleted = await client.delete(
        f"/v1/agents/{reg['agent_id']}/credentials/{key['id']}", headers=tenant_a.headers
    )
    assert deleted.status_code == 204
    await refused(fresh)


async def test_private_key_jwt_assertions_are_single_use(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    signer = SigningClient(reg["agent_id"])
    await signer.register_key(client, tenant_a)
    assertion = signer.assertion()
    first = await client.post("/oauth2/token", data=signer.form(assertion))
    assert first.status_code == 200, first.text
    replay = await client.post("/oauth2/token", data=signer.form(assertion))
    oauth_error(replay, 401, "invalid_client")
    # The same jti in a new assertion is a replay too.
    jti = jwt.decode(assertion, options={"verify_signature": False})["jti"]
    oauth_error(
        await client.post("/oauth2/token", data=signer.form(signer.assertion(jti=jti))), 401, "invalid_client"
    )
    assert (await client.post("/oauth2/token", data=signer.form())).status_code == 200


async def test_private_key_jwt_of_a_suspended_agent_is_refused(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    signer = SigningClient(reg["agent_id"])
    await signer.register_key(client, tenant_a)
    assert (
        await client.post(f"/v1/agents/{reg['agent_id']}/suspend", headers=tenant_a.headers)
    ).status_code == 200
    oauth_error(await client.post("/oauth2/token", data=signer.form()), 401, "invalid_client")


# -- introspection ----------------------------------------------------------------------------------------


async def test_introspection(client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    peer = await register(client, tenant_a, name="peer")
    foreign = await register(client, tenant_b, name="foreign")
    token = await access_token(client, reg, scope="agent")

    unauthenticated = await client.post("/oauth2/introspect", data={"token": token})
    oauth_error(unauthenticated, 401, "invalid_client")
    wrong = await client.post(
        "/oauth2/introspect", data={"token": token}, auth=(reg["client_id"], "aigos_cs_x")
    )
    oauth_error(wrong, 401, "invalid_client")
    missing = await client.post("/oauth2/introspect", data={}, auth=(reg["client_id"], reg["client_secret"]))
    oauth_error(missing, 400, "invalid_request")

    for caller in (reg, peer):
        response = await client.post(
            "/oauth2/introspect", data={"token": token}, auth=(caller["client_id"], caller["client_secret"])
        )
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["active"] is True
        assert body["sub"] == body["client_id"] == reg["agent_id"]
        assert body["aud"] == tenant_a.id
        assert body["iss"] == ISSUER
        assert body["scope"] == "agent"
        assert body["token_type"] == "Bearer"
        assert body["aigos:status"] == "active"
        assert body["aigos:capabilities"] == CAPABILITIES
        assert body["exp"] > body["iat"]
    # Another tenant's client learns nothing about the token.
    other = await client.post(
        "/oauth2/introspect", data={"token": token}, auth=(foreign["client_id"], foreign["client_secret"])
    )
    assert other.status_code == 200
    assert other.json() == {"active": False}
    for garbage in ("", "x", "a.b.c", token[:-4] + "AAAA"):
        response = await client.post(
            "/oauth2/introspect", data={"token": garbage}, auth=(reg["client_id"], reg["client_secret"])
        )
        assert response.json() == {"active": False}
    # private_key_jwt authenticates introspection too.
    signer = SigningClient(peer["agent_id"])
    await signer.register_key(client, tenant_a)
    signed = await client.post("/oauth2/introspect", data={**signer.form(), "token": token})
    assert signed.json()["active"] is True
    assert "grant_type" not in signed.json()


# -- revocation -------------------------------------------------------------------------------------------


async def test_revocation(client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    foreign = await register(client, tenant_b, name="foreign")
    auth = (reg["client_id"], reg["client_secret"])
    token = await access_token(client, reg)
    foreign_token = await access_token(client, foreign)

    oauth_error(await client.post("/oauth2/revoke", data={"token": token}), 401, "invalid_client")
    oauth_error(await client.post("/oauth2/revoke", data={}, auth=auth), 400, "invalid_request")
    hint = await client.post(
        "/oauth2/revoke", data={"token": token, "token_type_hint": "id_token"}, auth=auth
    )
    oauth_error(hint, 400, "unsupported_token_type")
    # Unknown or malformed tokens answer 200 (RFC 7009 2.2).
    for unknown in ("", "nope", "a.b.c", token[:-4] + "AAAA"):
        response = await client.post("/oauth2/revoke", data={"token": unknown}, auth=auth)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
    # Another tenant's token answers 200 too, and stays valid.
    assert (await client.post("/oauth2/revoke", data={"token": foreign_token}, auth=auth)).status_code == 200
    hb = await client.post(
        f"/v1/agents/{foreign['agent_id']}/heartbeat", headers={"Authorization": f"Bearer {foreign_token}"}
    )
    assert hb.status_code == 200

    revoked = await client.post(
        "/oauth2/revoke", data={"token": token, "token_type_hint": "access_token"}, auth=auth
    )
    assert revoked.status_code == 200
    assert revoked.content == b""
    hb = await client.post(
        f"/v1/agents/{reg['agent_id']}/heartbeat", headers={"Authorization": f"Bearer {token}"}
    )
    assert hb.status_code == 401
    assert hb.json()["code"] == "TOKEN_REVOKED"
    seen = await client.post("/oauth2/introspect", data={"token": token}, auth=auth)
    assert seen.json() == {"active": False}
    # Idempotent; other tokens of the agent keep working.
    assert (await client.post("/oauth2/revoke", data={"token": token}, auth=auth)).status_code == 200
    fresh = await access_token(client, reg)
    hb = await client.post(
        f"/v1/agents/{reg['agent_id']}/heartbeat", headers={"Authorization": f"Bearer {fresh}"}
    )
    assert hb.status_code == 200


# -- discovery --------------------------------------------------------------------------------------------


async def test_discovery_documents(client: AsyncClient) -> None:
    oauth = await client.get("/.well-known/oauth-authorization-server")
    openid = await client.get("/.well-known/openid-configuration")
    assert oauth.status_code == openid.status_code == 200
    meta = oauth.json()
    assert openid.json() == meta
    assert meta["issuer"] == ISSUER
    assert meta["token_endpoint"] == TOKEN_ENDPOINT
    assert meta["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
    assert meta["introspection_endpoint"] == ISSUER + "/oauth2/introspect"
    assert meta["revocation_endpoint"] == ISSUER + "/oauth2/revoke"
    assert set(meta["grant_types_supported"]) == {
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    }
    for field in (
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ):
        assert set(meta[field]) == {"client_secret_basic", "client_secret_post", "private_key_jwt"}
    assert set(meta["token_endpoint_auth_signing_alg_values_supported"]) == {"ES256", "EdDSA"}
    assert set(meta["scopes_supported"]) == set(DEFAULT_SCOPE.split())


async def test_jwks_publishes_only_public_keys(client: AsyncClient) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert "max-age" in response.headers["cache-control"]
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert key["kty"] == "EC"
        assert key["crv"] == "P-256"
        assert key["use"] == "sig"
        assert key["alg"] == "ES256"
        assert key["kid"]
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key)
        jwt.PyJWK(key)


async def test_configured_issuer_is_used_everywhere(tmp_path: Any) -> None:
    from asgi_lifespan import LifespanManager
    from httpx import ASGITransport

    from aigos.server.app import create_app
    from tests.conftest import embedded_settings
    from tests.helpers import signup

    issuer = "https://aigos.example.com"
    app = create_app(embedded_settings(tmp_path / "data", issuer=issuer + "/"))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://internal:8080") as http,
    ):
        meta = (await http.get("/.well-known/oauth-authorization-server")).json()
        assert meta["issuer"] == issuer
        assert meta["token_endpoint"] == issuer + "/oauth2/token"
        tenant = await signup(http, "Issuer")
        reg = await register(http, tenant)
        token = await access_token(http, reg)
        assert jwt.decode(token, options={"verify_signature": False})["iss"] == issuer
        hb = await http.post(
            f"/v1/agents/{reg['agent_id']}/heartbeat", headers={"Authorization": f"Bearer {token}"}
        )
        assert hb.status_code == 200
        # Assertions are addressed to the configured issuer, not to the address the request came in on.
        signer = SigningClient(reg["agent_id"])
        await signer.register_key(http, tenant)
        ok = await http.post(
            "/oauth2/token", data=signer.form(signer.assertion(aud=issuer + "/oauth2/token"))
        )
        assert ok.status_code == 200, ok.text
        internal = await http.post(
            "/oauth2/token", data=signer.form(signer.assertion(aud="http://internal:8080"))
        )
        assert internal.status_code == 401


async def test_guessing_a_client_secret_is_throttled(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    for _ in range(20):  # AIGOS_AUTH_FAILURES_PER_CLIENT
        oauth_error(await client_token(client, reg["client_id"], "aigos_cs_wrong"), 401, "invalid_client")
    refused = await client_token(client, reg["client_id"], "aigos_cs_wrong")
    body = oauth_error(refused, 429, "temporarily_unavailable")
    assert "failed client authentications" in body["error_description"]
    assert int(refused.headers["retry-after"]) >= 1
    # Refused before the secret is looked at: even the right one gets no token, so guesses learn nothing.
    oauth_error(
        await client_token(client, reg["client_id"], reg["client_secret"]), 429, "temporarily_unavailable"
    )
    # Another client is not held back by this one's failures.
    other = await register(client, tenant_a)
    assert (await client_token(client, other["client_id"], other["client_secret"])).status_code == 200
