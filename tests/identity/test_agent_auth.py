"""Attacks on agent-plane authentication: every forged, altered, misdirected, expired or revoked token is
refused with 401 on ``POST /v1/agents/{id}/heartbeat``.

Tokens that need a valid signature are signed with PyJWT using the server's own private key (read from the
running app), so that each test isolates the one claim or header it breaks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fastapi import FastAPI
from httpx import AsyncClient

from tests.helpers import TenantHandle
from tests.identity.helpers import access_token, bearer, claims_of, heartbeat, register, segment

ISSUER = "http://testserver"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A JWS compact serialisation with whatever signature is given."""
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    return f"{head}.{body}.{b64(signature)}"


class Forge:
    """Builds tokens for one agent: with the server's key, another key, or none."""

    def __init__(self, app: FastAPI, agent_id: str, tenant_id: str) -> None:
        active = app.state.runtime.keys.active
        self.kid: str = active.kid
        self.private = serialization.load_pem_private_key(active.key.as_pem(private=True), password=None)
        self.public_pem: bytes = active.key.as_pem(private=False)
        self.public_jwk: dict[str, Any] = active.key.as_dict(private=False)
        self.agent_id = agent_id
        self.tenant_id = tenant_id

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": self.agent_id,
            "aud": self.tenant_id,
            "exp": now + 600,
            "iat": now,
            "nbf": now,
            "jti": uuid.uuid4().hex,
            "client_id": self.agent_id,
            "scope": "agent",
            "aigos:version": "1.0",
            "aigos:capabilities": {"tools": ["*"], "domains": ["*"], "max_budget": None},
        }
        claims.update(overrides)
        return {key: value for key, value in claims.items() if value is not None}

    def header(self, **overrides: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"kid": self.kid, "typ": "at+jwt"}
        header.update(overrides)
        return {key: value for key, value in header.items() if value is not None}

    def sign(
        self, key: Any = None, alg: str = "ES256", header: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        return jwt.encode(
            self.claims(**claims),
            key if key is not None else self.private,
            algorithm=alg,
            headers=header or self.header(),
        )

    def hs256(self, secret: bytes) -> str:
        header = self.header(alg="HS256")
        claims = self.claims()
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(signature)}"


def _tampered(forge: Forge, **changes: Any) -> str:
    token = forge.sign()
    head, body, signature = token.split(".")
    claims = {**segment(body), **changes}
    return f"{head}.{b64(json.dumps(claims).encode())}.{signature}"


def _resigned_header(forge: Forge, **changes: Any) -> str:
    token = forge.sign()
    head, body, signature = token.split(".")
    return f"{b64(json.dumps({**segment(head), **changes}).encode())}.{body}.{signature}"


ATTACKS: dict[str, Callable[[Forge], str]] = {
    "alg-none": lambda f: compact(f.header(alg="none"), f.claims()),
    "alg-none-uppercase": lambda f: compact(f.header(alg="NONE"), f.claims()),
    "alg-none-with-real-signature": lambda f: _resigned_header(f, alg="none"),
    "hs256-with-public-pem": lambda f: f.hs256(f.public_pem),
    "hs256-with-public-jwk-json": lambda f: f.hs256(json.dumps(f.public_jwk).encode()),
    "hs256-with-public-x": lambda f: f.hs256(base64.urlsafe_b64decode(f.public_jwk["x"] + "==")),
    "expired": lambda f: f.sign(
        iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200, exp=int(time.time()) - 3600
    ),
    "expired-beyond-leeway": lambda f: f.sign(exp=int(time.time()) - 120),
    "not-yet-valid": lambda f: f.sign(nbf=int(time.time()) + 3600),
    "wrong-issuer": lambda f: f.sign(iss="https://evil.example"),
    "issuer-with-trailing-slash": lambda f: f.sign(iss=ISSUER + "/"),
    "no-issuer": lambda f: f.sign(iss=None),
    "no-expiry": lambda f: f.sign(exp=None),
    "no-jti": lambda f: f.sign(jti=None),
    "no-subject": lambda f: f.sign(sub=None),
    "subject-not-a-uuid": lambda f: f.sign(sub="admin"),
    "no-audience": lambda f: f.sign(aud=None),
    "audience-not-a-uuid": lambda f: f.sign(aud="aigos"),
    "audience-list": lambda f: f.sign(aud=[f.tenant_id, str(uuid.uuid4())]),
    "audience-unknown-tenant": lambda f: f.sign(aud=str(uuid.uuid4())),
    "typ-jwt": lambda f: f.sign(header=f.header(typ="JWT")),
    "typ-missing": lambda f: f.sign(header=f.header(typ=None)),
    "typ-id-token": lambda f: f.sign(header=f.header(typ="id_token+jwt")),
    "tampered-capabilities": lambda f: _tampered(f, **{"aigos:capabilities": {"tools": ["rm_rf"]}}),
    "tampered-expiry": lambda f: _tampered(f, exp=int(time.time()) + 10**8),
    "tampered-header-kid": lambda f: _resigned_header(f, kid="other"),
    "truncated-signature": lambda f: f.sign()[:-10],
    "no-signature": lambda f: f.sign().rsplit(".", 1)[0] + ".",
    "two-segments": lambda f: f.sign().rsplit(".", 1)[0],
    "unknown-kid": lambda f: f.sign(
        ec.generate_private_key(ec.SECP256R1()), header=f.header(kid="no-such-key")
    ),
    "real-kid-other-key": lambda f: f.sign(ec.generate_private_key(ec.SECP256R1())),
    "no-kid-other-key": lambda f: f.sign(ec.generate_private_key(ec.SECP256R1()), header=f.header(kid=None)),
    "eddsa-other-key": lambda f: f.sign(ed25519.Ed25519PrivateKey.generate(), alg="EdDSA"),
    "es384-other-key": lambda f: f.sign(ec.generate_private_key(ec.SECP384R1()), alg="ES384"),
    "jku-injection": lambda f: f.sign(
        ec.generate_private_key(ec.SECP256R1()),
        header=f.header(kid="attacker", jku="https://evil.example/jwks.json"),
    ),
    "embedded-jwk": lambda f: _embedded_jwk(f),
    "not-base64": lambda f: "@@@.###.$$$",
    "empty-segments": lambda f: "..",
    "json-array-header": lambda f: f"{b64(b'[]')}.{b64(b'{}')}.",
}


def _embedded_jwk(forge: Forge) -> str:
    attacker = ec.generate_private_key(ec.SECP256R1())
    numbers = attacker.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
    }
    return forge.sign(attacker, header=forge.header(kid=None, jwk=jwk))


@pytest.fixture
async def victim(client: AsyncClient, app: FastAPI, tenant_a: TenantHandle) -> tuple[dict[str, Any], Forge]:
    reg = await register(client, tenant_a)
    return reg, Forge(app, reg["agent_id"], tenant_a.id)


def assert_refused(response: Any, code: str = "INVALID_TOKEN") -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code, response.json()
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_forged_tokens_are_accepted_only_when_well_formed(
    client: AsyncClient, victim: tuple[dict[str, Any], Forge]
) -> None:
    """The control: a token built the way the attacks are, but with nothing broken, is accepted."""
    reg, forge = victim
    for token in (forge.sign(), forge.sign(header=forge.header(typ="application/at+jwt"))):
        response = await heartbeat(client, reg["agent_id"], token)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_attack_is_refused(
    client: AsyncClient, victim: tuple[dict[str, Any], Forge], attack: str
) -> None:
    reg, forge = victim
    token = ATTACKS[attack](forge)
    response = await heartbeat(client, reg["agent_id"], token)
    assert_refused(response)
    # Nothing of the token is echoed back.
    assert token.split(".")[-1] not in response.text or token.endswith(".")
    # The agent's genuine token still works afterwards.
    assert (await heartbeat(client, reg["agent_id"], reg["identity_token"])).status_code == 200


async def test_token_for_an_agent_of_another_tenant(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    mine = await register(client, tenant_a)
    theirs = await register(client, tenant_b)
    forge_a = Forge(app, mine["agent_id"], tenant_a.id)
    # Signed by the server, but sub and aud disagree: A's agent claimed for B's tenant and the reverse.
    assert_refused(await heartbeat(client, mine["agent_id"], forge_a.sign(aud=tenant_b.id)))
    assert_refused(await heartbeat(client, theirs["agent_id"], forge_a.sign(sub=theirs["agent_id"])))
    # A genuine token of B's agent does not reach A's agent.
    response = await heartbeat(client, mine["agent_id"], theirs["identity_token"])
    assert response.status_code == 404
    assert response.json()["code"] == "AGENT_NOT_FOUND"


async def test_revoked_jti_is_refused(client: AsyncClient, victim: tuple[dict[str, Any], Forge]) -> None:
    reg, _ = victim
    token = await access_token(client, reg)
    assert (await heartbeat(client, reg["agent_id"], token)).status_code == 200  # now cached as verified
    auth = (reg["client_id"], reg["client_secret"])
    assert (await client.post("/oauth2/revoke", data={"token": token}, auth=auth)).status_code == 200
    assert_refused(await heartbeat(client, reg["agent_id"], token), "TOKEN_REVOKED")
    # Only that jti: the registration token is another one.
    assert (await heartbeat(client, reg["agent_id"], reg["identity_token"])).status_code == 200


async def test_missing_or_wrong_kind_of_credential(
    client: AsyncClient, victim: tuple[dict[str, Any], Forge], tenant_a: TenantHandle
) -> None:
    reg, _ = victim
    path = f"/v1/agents/{reg['agent_id']}/heartbeat"
    missing = await client.post(path)
    assert missing.status_code == 401
    assert missing.json()["code"] == "UNAUTHENTICATED"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.post(path, headers={"Authorization": "Bearer "})).status_code == 401
    basic = await client.post(path, auth=(reg["client_id"], reg["client_secret"]))
    assert basic.status_code == 401
    # The tenant's admin key, or the client secret, is not an agent token.
    assert_refused(await client.post(path, headers=tenant_a.headers))
    assert_refused(await client.post(path, headers=bearer(reg["client_secret"])))


async def test_tokens_survive_a_signing_key_reload(
    client: AsyncClient, app: FastAPI, victim: tuple[dict[str, Any], Forge]
) -> None:
    reg, _ = victim
    token = await access_token(client, reg)
    await app.state.runtime.keys.reload()
    assert (await heartbeat(client, reg["agent_id"], token)).status_code == 200
    assert claims_of(token)["sub"] == reg["agent_id"]


async def test_a_stale_status_message_does_not_undo_a_later_change(
    client: AsyncClient, app: FastAPI, victim: tuple[dict[str, Any], Forge], tenant_a: TenantHandle
) -> None:
    """Suspended on one replica, reactivated on another: the suspension's message may arrive last."""
    from aigos.core.canonical import canonical
    from aigos.server.identity.state import CHANNEL

    reg, _ = victim
    runtime = app.state.runtime
    announced_before = time.time()
    assert (
        await client.post(f"/v1/agents/{reg['agent_id']}/suspend", headers=tenant_a.headers)
    ).status_code == 200
    assert (
        await client.post(f"/v1/agents/{reg['agent_id']}/reactivate", headers=tenant_a.headers)
    ).status_code == 200
    # Another replica's suspension, announced before our reactivation, delivered only now; then a marker
    # that tells when the listener has handled everything before it.
    stale = {"type": "status", "agent_id": reg["agent_id"], "status": "suspended", "at": announced_before}
    marker = uuid.uuid4().hex
    await runtime.bus.pubsub.publish(CHANNEL, canonical({**stale, "origin": "other-replica"}))
    await runtime.bus.pubsub.publish(
        CHANNEL,
        canonical({"type": "revoked", "jti": marker, "exp": time.time() + 60, "origin": "other-replica"}),
    )
    for _ in range(100):
        if runtime.identity.is_revoked(marker):
            break
        await asyncio.sleep(0.02)
    assert runtime.identity.is_revoked(marker)
    assert (await heartbeat(client, reg["agent_id"], reg["identity_token"])).status_code == 200
    # A newer one from elsewhere does apply.
    newer = {**stale, "at": time.time() + 1, "origin": "other-replica"}
    await runtime.bus.pubsub.publish(CHANNEL, canonical(newer))
    for _ in range(100):
        if runtime.identity.status_of(uuid.UUID(reg["agent_id"])).value == "suspended":
            break
        await asyncio.sleep(0.02)
    assert_refused(await heartbeat(client, reg["agent_id"], reg["identity_token"]), "AGENT_SUSPENDED")
