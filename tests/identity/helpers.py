"""What the identity suites share: agents registered and tokens obtained through the public API, and
checks of problem documents, OAuth errors and JWTs."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from httpx import AsyncClient, Response

from tests.helpers import TenantHandle, bearer

CAPABILITIES: dict[str, Any] = {"tools": ["web_*", "calc"], "domains": ["*.example.com"], "max_budget": 100.0}


async def create(client: AsyncClient, tenant: TenantHandle, **spec: Any) -> dict[str, Any]:
    """``POST /v1/agents`` (no credential); asserts 201."""
    response = await client.post("/v1/agents", json={"name": "bot", **spec}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def register(client: AsyncClient, tenant: TenantHandle, **spec: Any) -> dict[str, Any]:
    """``POST /v1/agents/register``: an agent with a client secret and a first token; asserts 201."""
    spec.setdefault("capabilities", CAPABILITIES)
    response = await client.post("/v1/agents/register", json={"name": "bot", **spec}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def client_token(client: AsyncClient, client_id: str, secret: str, **form: str) -> Response:
    """``client_credentials`` with ``client_secret_basic``."""
    return await client.post(
        "/oauth2/token", data={"grant_type": "client_credentials", **form}, auth=(client_id, secret)
    )


async def access_token(client: AsyncClient, reg: dict[str, Any], **form: str) -> str:
    """A fresh access token of a registered agent; asserts 200."""
    response = await client_token(client, reg["client_id"], reg["client_secret"], **form)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def heartbeat(client: AsyncClient, agent_id: str, token: str) -> Response:
    """``POST /v1/agents/{id}/heartbeat`` with an agent token."""
    return await client.post(f"/v1/agents/{agent_id}/heartbeat", headers=bearer(token))


def segment(part: str) -> dict[str, Any]:
    """A JWT header or payload, decoded without any verification."""
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (the server's signature is checked elsewhere)."""
    return segment(token.split(".")[1])


def assert_problem(response: Response, status: int, code: str) -> dict[str, Any]:
    """A problem document with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def pointers(response: Response) -> set[str]:
    """The JSON pointers of a validation problem."""
    return {error["pointer"] for error in assert_problem(response, 400, "VALIDATION_FAILED")["errors"]}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


ISSUER = "http://testserver"
TOKEN_ENDPOINT = ISSUER + "/oauth2/token"

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def oauth_error(response: Response, status: int, error: str) -> dict[str, Any]:
    """An RFC 6749 error response."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert isinstance(body.get("error_description"), str)
    return body


class SigningClient:
    """An agent that authenticates with ``private_key_jwt``: its private key, registered public JWK."""

    def __init__(self, agent_id: str, kind: str = "EC") -> None:
        self.agent_id = agent_id
        self.private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
        if kind == "EC":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
            numbers = self.private.public_key().public_numbers()
            self.jwk = {
                "kty": "EC",
                "crv": "P-256",
                "x": _b64(numbers.x.to_bytes(32, "big")),
                "y": _b64(numbers.y.to_bytes(32, "big")),
            }
        else:
            from cryptography.hazmat.primitives import serialization

            self.private = ed25519.Ed25519PrivateKey.generate()
            self.alg = "EdDSA"
            raw = self.private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}

    async def register_key(self, client: AsyncClient, tenant: TenantHandle) -> dict[str, Any]:
        response = await client.post(
            f"/v1/agents/{self.agent_id}/credentials",
            json={"name": "signing", "public_jwk": self.jwk},
            headers=tenant.headers,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def assertion(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.agent_id,
            "sub": self.agent_id,
            "aud": TOKEN_ENDPOINT,
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        claims = {key: value for key, value in claims.items() if value is not None}
        return jwt.encode(claims, self.private, algorithm=self.alg)

    def form(self, assertion: str | None = None, **extra: str) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion or self.assertion(),
            **extra,
        }


async def jwks(client: AsyncClient) -> dict[str, Any]:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def verified(client: AsyncClient, token: str, audience: str) -> dict[str, Any]:
    """The claims of ``token``, checked with PyJWT against the published keys."""
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    (key,) = [jwt.PyJWK(k) for k in (await jwks(client))["keys"] if k["kid"] == header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "jti", "sub", "aud", "iss"]},
    )
    return claims


TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


async def exchange(client: AsyncClient, subject_token: str, child_id: str, **extra: str) -> Response:
    return await client.post(
        "/oauth2/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "requested_agent": child_id,
            **extra,
        },
    )


async def family(
    client: AsyncClient, tenant: TenantHandle, **child_spec: Any
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """A registered parent, a token of it, and a child registered under it."""
    parent = await register(client, tenant, name="parent")
    child_spec.setdefault(
        "capabilities", {"tools": ["web_search"], "domains": ["api.example.com"], "max_budget": 10}
    )
    child = await create(client, tenant, name="child", parent_id=parent["agent_id"], **child_spec)
    return parent, await access_token(client, parent), child


async def agent_events(client: AsyncClient, tenant: TenantHandle, **params: Any) -> list[dict[str, Any]]:
    """The tenant's ``agent.*`` audit events, newest first."""
    response = await client.get(
        "/v1/audit/events", params={"event_type": "agent.*", "limit": 100, **params}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data
