"""Agent credentials: several per agent, rotation with a grace period, revocation, public JWKs."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from httpx import ASGITransport, AsyncClient
from joserfc.jwk import ECKey, OKPKey

from aigos.server.app import create_app
from aigos.server.config import Settings
from tests.helpers import TenantHandle, signup
from tests.identity.helpers import _b64, access_token, assert_problem, client_token, pointers, register


def ec_jwk(private: bool = False, curve: ec.EllipticCurve | None = None) -> dict[str, Any]:
    """A fresh EC key as a JWK (public unless ``private``)."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    numbers = key.private_numbers()
    size = (key.curve.key_size + 7) // 8
    jwk = {
        "kty": "EC",
        "crv": {256: "P-256", 384: "P-384", 521: "P-521"}[key.curve.key_size],
        "x": _b64(numbers.public_numbers.x.to_bytes(size, "big")),
        "y": _b64(numbers.public_numbers.y.to_bytes(size, "big")),
    }
    if private:
        jwk["d"] = _b64(numbers.private_value.to_bytes(size, "big"))
    return jwk


def ed25519_jwk() -> dict[str, Any]:
    """A fresh Ed25519 public key as a JWK."""
    from cryptography.hazmat.primitives import serialization

    raw = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}


def rsa_jwk() -> dict[str, Any]:
    """A fresh RSA public key as a JWK (not accepted here)."""
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
    return {
        "kty": "RSA",
        "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64(numbers.e.to_bytes(3, "big")),
    }


async def add_credential(
    client: AsyncClient, tenant: TenantHandle, agent_id: str, **spec: Any
) -> dict[str, Any]:
    """``POST /v1/agents/{id}/credentials``; asserts 201."""
    response = await client.post(f"/v1/agents/{agent_id}/credentials", json=spec, headers=tenant.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def list_credentials(
    client: AsyncClient, tenant: TenantHandle, agent_id: str
) -> dict[str, dict[str, Any]]:
    """The agent's credentials by id."""
    response = await client.get(f"/v1/agents/{agent_id}/credentials", headers=tenant.headers)
    assert response.status_code == 200, response.text
    return {cred["id"]: cred for cred in response.json()}


async def rotate(
    client: AsyncClient, tenant: TenantHandle, agent_id: str, credential_id: str, body: Any = None
) -> Any:
    return await client.post(
        f"/v1/agents/{agent_id}/credentials/{credential_id}/rotate", json=body, headers=tenant.headers
    )


async def test_several_credentials_per_agent(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    agent_id = reg["agent_id"]
    second = await add_credential(client, tenant_a, agent_id, name="ci")
    third = await add_credential(client, tenant_a, agent_id)
    key = await add_credential(client, tenant_a, agent_id, name="signing", public_jwk=ed25519_jwk())
    assert second["kind"] == "client_secret"
    assert second["name"] == "ci"
    assert second["status"] == "active"
    assert second["client_secret"].startswith("aigos_cs_")
    assert second["client_secret"].startswith(second["secret_prefix"])
    assert second["agent_id"] == agent_id
    assert key["kind"] == "public_key"
    assert key["client_secret"] is None
    assert key["secret_prefix"] is None
    assert key["jwk_thumbprint"]

    listed = await list_credentials(client, tenant_a, agent_id)
    assert len(listed) == 4
    assert {cred["kind"] for cred in listed.values()} == {"client_secret", "public_key"}
    assert {cred["status"] for cred in listed.values()} == {"active"}
    assert all("client_secret" not in cred for cred in listed.values())
    text = (await client.get(f"/v1/agents/{agent_id}/credentials", headers=tenant_a.headers)).text
    for secret in (reg["client_secret"], second["client_secret"], third["client_secret"]):
        assert secret not in text
        assert (await client_token(client, reg["client_id"], secret)).status_code == 200
    # A secret is bound to its agent: another agent's client id with it is refused.
    other = await register(client, tenant_a, name="other")
    refused = await client_token(client, other["client_id"], second["client_secret"])
    assert refused.status_code == 401


async def test_rotation_with_grace_keeps_both_then_only_the_new(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    agent_id = reg["agent_id"]
    (old_id,) = await list_credentials(client, tenant_a, agent_id)
    response = await rotate(client, tenant_a, agent_id, old_id, {"grace_seconds": 1})
    assert response.status_code == 201, response.text
    new = response.json()
    assert new["rotated_from"] == old_id
    assert new["status"] == "active"
    assert new["client_secret"] != reg["client_secret"]

    listed = await list_credentials(client, tenant_a, agent_id)
    assert listed[old_id]["status"] == "grace"
    expires_at = datetime.fromisoformat(listed[old_id]["expires_at"])
    assert (await client_token(client, reg["client_id"], reg["client_secret"])).status_code == 200
    assert (await client_token(client, reg["client_id"], new["client_secret"])).status_code == 200
    # A secret in its grace period cannot be rotated again.
    assert_problem(await rotate(client, tenant_a, agent_id, old_id), 409, "CREDENTIAL_NOT_ACTIVE")

    # Wait for the grace period to end (by the server's own expiry time), then the old secret stops.
    await asyncio.sleep(max(0.0, (expires_at - datetime.now(expires_at.tzinfo)).total_seconds()) + 0.05)
    refused = await client_token(client, reg["client_id"], reg["client_secret"])
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    assert (await client_token(client, reg["client_id"], new["client_secret"])).status_code == 200
    assert (await list_credentials(client, tenant_a, agent_id))[old_id]["status"] == "expired"
    assert_problem(await rotate(client, tenant_a, agent_id, old_id), 409, "CREDENTIAL_NOT_ACTIVE")


async def test_rotation_without_grace_stops_the_old_secret_at_once(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    agent_id = reg["agent_id"]
    (old_id,) = await list_credentials(client, tenant_a, agent_id)
    response = await rotate(client, tenant_a, agent_id, old_id, {"grace_seconds": 0})
    assert response.status_code == 201, response.text
    refused = await client_token(client, reg["client_id"], reg["client_secret"])
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    assert (await client_token(client, reg["client_id"], response.json()["client_secret"])).status_code == 200
    listed = await list_credentials(client, tenant_a, agent_id)
    assert listed[old_id]["status"] == "revoked"
    assert listed[response.json()["id"]]["name"] == listed[old_id]["name"]


async def test_rotation_defaults_to_the_configured_grace(
    client: AsyncClient, app: Any, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    agent_id = reg["agent_id"]
    (old_id,) = await list_credentials(client, tenant_a, agent_id)
    response = await rotate(client, tenant_a, agent_id, old_id)
    assert response.status_code == 201, response.text
    old = (await list_credentials(client, tenant_a, agent_id))[old_id]
    assert old["status"] == "grace"
    grace = app.state.runtime.settings.credential_rotation_grace_seconds
    lasts = datetime.fromisoformat(old["expires_at"]) - datetime.fromisoformat(response.json()["created_at"])
    assert abs(lasts.total_seconds() - grace) < 60
    assert (await client_token(client, reg["client_id"], reg["client_secret"])).status_code == 200


async def test_rotation_refusals(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    agent_id = reg["agent_id"]
    key = await add_credential(client, tenant_a, agent_id, public_jwk=ec_jwk())
    assert_problem(await rotate(client, tenant_a, agent_id, key["id"]), 409, "NOT_ROTATABLE")
    assert_problem(await rotate(client, tenant_a, agent_id, str(uuid.uuid4())), 404, "CREDENTIAL_NOT_FOUND")
    (secret_id,) = [
        cid
        for cid, c in (await list_credentials(client, tenant_a, agent_id)).items()
        if c["kind"] == "client_secret"
    ]
    other = await register(client, tenant_a, name="other")
    # A credential is reached only through its own agent.
    assert_problem(await rotate(client, tenant_a, other["agent_id"], secret_id), 404, "CREDENTIAL_NOT_FOUND")
    for grace in (-1, 30 * 86_400 + 1, "soon"):
        assert pointers(await rotate(client, tenant_a, agent_id, secret_id, {"grace_seconds": grace})) == {
            "/grace_seconds"
        }


async def test_revoke_stops_a_credential_at_once(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    agent_id = reg["agent_id"]
    spare = await add_credential(client, tenant_a, agent_id)
    (first_id,) = [cid for cid in await list_credentials(client, tenant_a, agent_id) if cid != spare["id"]]
    token = await access_token(client, reg)

    deleted = await client.delete(f"/v1/agents/{agent_id}/credentials/{first_id}", headers=tenant_a.headers)
    assert deleted.status_code == 204
    basic = await client_token(client, reg["client_id"], reg["client_secret"])
    assert basic.status_code == 401
    assert basic.json()["error"] == "invalid_client"
    assert basic.headers["WWW-Authenticate"].startswith("Basic")
    post = await client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": reg["client_id"],
            "client_secret": reg["client_secret"],
        },
    )
    assert post.status_code == 401
    assert post.json()["error"] == "invalid_client"
    # The other credential and already-issued tokens are unaffected (revoke tokens at /oauth2/revoke).
    assert (await client_token(client, reg["client_id"], spare["client_secret"])).status_code == 200
    assert (
        await client.post(f"/v1/agents/{agent_id}/heartbeat", headers={"Authorization": f"Bearer {token}"})
    ).status_code == 200
    listed = await list_credentials(client, tenant_a, agent_id)
    assert listed[first_id]["status"] == "revoked"
    assert listed[first_id]["revoked_at"] is not None
    # Idempotent; unknown ids are 404.
    again = await client.delete(f"/v1/agents/{agent_id}/credentials/{first_id}", headers=tenant_a.headers)
    assert again.status_code == 204
    assert (await list_credentials(client, tenant_a, agent_id))[first_id]["revoked_at"] == listed[first_id][
        "revoked_at"
    ]
    missing = await client.delete(
        f"/v1/agents/{agent_id}/credentials/{uuid.uuid4()}", headers=tenant_a.headers
    )
    assert_problem(missing, 404, "CREDENTIAL_NOT_FOUND")
    assert_problem(await rotate(client, tenant_a, agent_id, first_id), 409, "CREDENTIAL_NOT_ACTIVE")


async def test_credentials_of_unknown_agents_are_404(client: AsyncClient, tenant_a: TenantHandle) -> None:
    unknown = str(uuid.uuid4())
    assert_problem(
        await client.get(f"/v1/agents/{unknown}/credentials", headers=tenant_a.headers),
        404,
        "AGENT_NOT_FOUND",
    )
    assert_problem(
        await client.post(f"/v1/agents/{unknown}/credentials", json={}, headers=tenant_a.headers),
        404,
        "AGENT_NOT_FOUND",
    )


async def test_suspended_agents_may_get_credentials(client: AsyncClient, tenant_a: TenantHandle) -> None:
    reg = await register(client, tenant_a)
    assert (
        await client.post(f"/v1/agents/{reg['agent_id']}/suspend", headers=tenant_a.headers)
    ).status_code == 200
    created = await add_credential(client, tenant_a, reg["agent_id"])
    # ...but cannot use them until reactivated.
    assert (await client_token(client, reg["client_id"], created["client_secret"])).status_code == 401
    assert (
        await client.post(f"/v1/agents/{reg['agent_id']}/reactivate", headers=tenant_a.headers)
    ).status_code == 200
    assert (await client_token(client, reg["client_id"], created["client_secret"])).status_code == 200


# -- public keys ------------------------------------------------------------------------------------------


async def test_public_keys_are_registered_with_their_thumbprint(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    reg = await register(client, tenant_a)
    agent_id = reg["agent_id"]
    for jwk, key_class in ((ec_jwk(), ECKey), (ed25519_jwk(), OKPKey)):
        created = await add_credential(client, tenant_a, agent_id, public_jwk={**jwk, "use": "sig"})
        assert created["jwk_thumbprint"] == key_class.import_key(jwk).thumbprint()
        assert created["status"] == "active"
    same = await client.post(
        f"/v1/agents/{agent_id}/credentials", json={"public_jwk": jwk}, headers=tenant_a.headers
    )
    assert_problem(same, 409, "CREDENTIAL_EXISTS")
    # Revoked, the key may be registered again.
    await client.delete(f"/v1/agents/{agent_id}/credentials/{created['id']}", headers=tenant_a.headers)
    await add_credential(client, tenant_a, agent_id, public_jwk=jwk)


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param(ec_jwk(private=True), id="ec-private"),
        pytest.param({**ed25519_jwk(), "d": _b64(b"\x01" * 32)}, id="okp-private"),
        pytest.param({"kty": "oct", "k": _b64(b"secret-key-material-0123456789ab")}, id="symmetric"),
        pytest.param({**rsa_jwk(), "p": "AQAB", "q": "AQAB"}, id="rsa-private"),
        pytest.param(rsa_jwk(), id="rsa-public"),
        pytest.param(ec_jwk(curve=ec.SECP384R1()), id="ec-p384"),
        pytest.param(ec_jwk(curve=ec.SECP256K1()) | {"crv": "secp256k1"}, id="ec-secp256k1"),
        pytest.param({"kty": "OKP", "crv": "X25519", "x": _b64(b"\x09" * 32)}, id="okp-x25519"),
        pytest.param(
            {"kty": "EC", "crv": "P-256", "x": _b64(b"\x01" * 32), "y": _b64(b"\x02" * 32)}, id="off-curve"
        ),
        pytest.param({"kty": "EC", "crv": "P-256", "x": "!!"}, id="malformed"),
        pytest.param({"kty": "OKP", "crv": "Ed25519", "x": _b64(b"short")}, id="short-ed25519"),
        pytest.param({}, id="empty"),
    ],
)
async def test_unusable_public_keys_are_refused(
    client: AsyncClient, tenant_a: TenantHandle, jwk: dict[str, Any]
) -> None:
    reg = await register(client, tenant_a)
    response = await client.post(
        f"/v1/agents/{reg['agent_id']}/credentials", json={"public_jwk": jwk}, headers=tenant_a.headers
    )
    assert pointers(response) == {"/public_jwk"}
    # Nothing of the key is echoed back.
    if "d" in jwk:
        assert jwk["d"] not in response.text
    assert len(await list_credentials(client, tenant_a, reg["agent_id"])) == 1


async def test_last_use_of_each_secret_shows_whether_the_old_one_is_still_used(
    settings: Settings,
) -> None:
    """During a rotation's grace period the operator sees which secret the agent still authenticates with."""
    async with served(settings) as http:
        owner = await signup(http)
        reg = await register(http, owner)
        agent_id = reg["agent_id"]
        (old_id,) = await list_credentials(http, owner, agent_id)
        assert (await list_credentials(http, owner, agent_id))[old_id]["last_used_at"] is None
        rotated = await rotate(http, owner, agent_id, old_id, {"grace_seconds": 3600})
        assert rotated.status_code == 201, rotated.text
        new_id = rotated.json()["id"]
        before = datetime.now(UTC)
        assert (await client_token(http, reg["client_id"], reg["client_secret"])).status_code == 200
        # Shown at once, although the write is batched.
        listed = await list_credentials(http, owner, agent_id)
        assert listed[old_id]["status"] == "grace"
        assert datetime.fromisoformat(listed[old_id]["last_used_at"]) >= before.replace(microsecond=0)
        assert listed[new_id]["last_used_at"] is None
    # Written by shutdown at the latest: another server process reads it from the database.
    async with served(settings) as http:
        listed = await list_credentials(http, owner, agent_id)
        assert datetime.fromisoformat(listed[old_id]["last_used_at"]) >= before.replace(microsecond=0)
        assert listed[new_id]["last_used_at"] is None


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[AsyncClient]:
    """A client of a started app on ``settings`` (started again on the same state by the next call)."""
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as http,
    ):
        yield http
