"""Agent credentials: client secrets (shown once, stored as HMAC) and public JWKs for ``private_key_jwt``."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import secrets
from aigos.server.db.types import utcnow
from aigos.server.errors import Conflict, NotFound, ValidationFailed
from aigos.server.identity.models import Agent, AgentCredential
from aigos.server.identity.schemas import CredentialCreated, CredentialOut

CLIENT_SECRET_PREFIX = "aigos_cs_"


def status_of(credential: AgentCredential, now: datetime | None = None) -> str:
    """``active``, ``grace`` (rotated, still working), ``expired`` or ``revoked``."""
    now = now or utcnow()
    if credential.revoked_at is not None:
        return "revoked"
    if credential.expires_at is not None:
        return "expired" if credential.expires_at <= now else "grace"
    return "active"


def usable(credential_status: str) -> bool:
    """Whether a credential in this status authenticates."""
    return credential_status in ("active", "grace")


def to_out(credential: AgentCredential, last_used: datetime | None = None) -> CredentialOut:
    """The listed form of a credential, with a use not yet written (``Touches.pending``) taken into account.

    ``last_used_at`` tells an operator whether a rotated-out secret is still in use during its grace period.
    """
    stored = credential.last_used_at
    if last_used is not None and (stored is None or last_used > stored):
        stored = last_used
    return CredentialOut(
        id=credential.id,
        agent_id=credential.agent_id,
        kind=credential.kind,
        name=credential.name,
        secret_prefix=credential.secret_prefix,
        jwk_thumbprint=credential.jwk_thumbprint,
        status=status_of(credential),
        created_at=credential.created_at,
        expires_at=credential.expires_at,
        revoked_at=credential.revoked_at,
        rotated_from=credential.rotated_from,
        last_used_at=stored,
    )


def parse_public_jwk(jwk: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A public EC P-256 or Ed25519 JWK, normalised, and its RFC 7638 thumbprint. Private parts refused."""
    if any(name in jwk for name in ("d", "p", "q", "k")):
        raise ValidationFailed(
            "public_jwk contains private key material; send only the public key.",
            errors=[{"pointer": "/public_jwk", "detail": "private key material"}],
        )
    try:
        key: ECKey | OKPKey
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            key = ECKey.import_key(jwk)
        elif jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            key = OKPKey.import_key(jwk)
        else:
            raise ValueError("only EC P-256 (ES256) and OKP Ed25519 (EdDSA) keys are accepted")
    except (JoseError, ValueError, TypeError) as exc:
        raise ValidationFailed(
            f"public_jwk is not a usable public key: {exc}",
            errors=[{"pointer": "/public_jwk", "detail": str(exc)}],
        ) from exc
    thumbprint = key.thumbprint()
    public = {**key.as_dict(private=False), "kid": jwk.get("kid") or thumbprint}
    return public, thumbprint


async def issue_secret(
    session: AsyncSession,
    pepper: bytes,
    tenant_id: uuid.UUID,
    agent_id: uuid.UUID,
    name: str = "default",
    rotated_from: uuid.UUID | None = None,
) -> CredentialCreated:
    """A new client secret for the agent; the response carries it once."""
    secret = secrets.mint(CLIENT_SECRET_PREFIX)
    credential = AgentCredential(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        agent_id=agent_id,
        kind="client_secret",
        name=name,
        secret_prefix=secrets.display_prefix(secret, CLIENT_SECRET_PREFIX),
        secret_hash=secrets.digest(secret, pepper),
        created_at=utcnow(),
        rotated_from=rotated_from,
    )
    session.add(credential)
    await session.flush()
    return CredentialCreated(**to_out(credential).model_dump(), client_secret=secret)


async def add_public_key(
    session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, name: str, jwk: dict[str, Any]
) -> CredentialCreated:
    """Register a public JWK the agent signs client assertions with."""
    public, thumbprint = parse_public_jwk(jwk)
    existing = await session.scalar(
        select(AgentCredential.id).where(
            AgentCredential.tenant_id == tenant_id,
            AgentCredential.agent_id == agent_id,
            AgentCredential.jwk_thumbprint == thumbprint,
            AgentCredential.revoked_at.is_(None),
        )
    )
    if existing is not None:
        raise Conflict("This public key is already registered for the agent.", code="CREDENTIAL_EXISTS")
    credential = AgentCredential(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        agent_id=agent_id,
        kind="public_key",
        name=name,
        public_jwk=public,
        jwk_thumbprint=thumbprint,
        created_at=utcnow(),
    )
    session.add(credential)
    await session.flush()
    return CredentialCreated(**to_out(credential).model_dump(), client_secret=None)


async def list_for(session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> list[AgentCredential]:
    """The agent's credentials, newest first."""
    rows = await session.scalars(
        select(AgentCredential)
        .where(AgentCredential.tenant_id == tenant_id, AgentCredential.agent_id == agent_id)
        .order_by(AgentCredential.created_at.desc(), AgentCredential.id)
    )
    return list(rows.all())


async def get(
    session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, credential_id: uuid.UUID
) -> AgentCredential:
    """One credential of the agent; 404 ``CREDENTIAL_NOT_FOUND`` otherwise."""
    credential = await session.scalar(
        select(AgentCredential).where(
            AgentCredential.id == credential_id,
            AgentCredential.tenant_id == tenant_id,
            AgentCredential.agent_id == agent_id,
        )
    )
    if credential is None:
        raise NotFound(f"No credential {credential_id}.", code="CREDENTIAL_NOT_FOUND")
    return credential


async def revoke(
    session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, credential_id: uuid.UUID
) -> AgentCredential:
    """Stop the credential now (idempotent)."""
    credential = await get(session, tenant_id, agent_id, credential_id)
    if credential.revoked_at is None:
        credential.revoked_at = utcnow()
    return credential


async def rotate_secret(
    session: AsyncSession,
    pepper: bytes,
    tenant_id: uuid.UUID,
    agent_id: uuid.UUID,
    credential_id: uuid.UUID,
    grace_seconds: int,
) -> CredentialCreated:
    """A successor secret; the old one works ``grace_seconds`` longer (0: stops now)."""
    old = await get(session, tenant_id, agent_id, credential_id)
    if old.kind != "client_secret":
        raise Conflict("Only client secrets rotate; register a new public key instead.", code="NOT_ROTATABLE")
    if status_of(old) != "active":
        raise Conflict(
            f"Only an active secret can be rotated; this one is {status_of(old)}.",
            code="CREDENTIAL_NOT_ACTIVE",
        )
    if grace_seconds == 0:
        old.revoked_at = utcnow()
    else:
        old.expires_at = utcnow() + timedelta(seconds=grace_seconds)
    return await issue_secret(session, pepper, tenant_id, agent_id, old.name, rotated_from=old.id)


async def find_by_secret(session: AsyncSession, secret: str, pepper: bytes) -> dict[str, Any] | None:
    """The credential a client secret belongs to, across tenants (the tenant is not known yet).

    PostgreSQL hides every row until the tenant is set, so the look-up goes through the SECURITY DEFINER
    function ``aigos_find_client_secret``, which returns only the row with this exact hash.
    """
    digest = secrets.digest(secret, pepper)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        found = (
            await session.execute(text("SELECT * FROM aigos_find_client_secret(:h)"), {"h": digest})
        ).mappings()
        row = found.first()
        return dict(row) if row is not None else None
    stmt = select(
        AgentCredential.id.label("credential_id"),
        AgentCredential.tenant_id,
        AgentCredential.agent_id,
        AgentCredential.expires_at,
        AgentCredential.revoked_at,
    ).where(AgentCredential.kind == "client_secret", AgentCredential.secret_hash == digest)
    row = (await session.execute(stmt)).mappings().first()
    return dict(row) if row is not None else None


async def tenant_of_agent(session: AsyncSession, agent_id: uuid.UUID) -> uuid.UUID | None:
    """The tenant of an agent named by its client id, before any tenant context exists."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        value = await session.scalar(text("SELECT aigos_find_agent_tenant(:a)"), {"a": agent_id})
        return uuid.UUID(str(value)) if value is not None else None
    return await session.scalar(select(Agent.tenant_id).where(Agent.id == agent_id))
