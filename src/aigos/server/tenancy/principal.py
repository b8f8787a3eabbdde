"""Who is calling: a bearer credential resolved into a principal with tenant, scopes and actor id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import secrets
from aigos.server.db.types import utcnow
from aigos.server.errors import Forbidden, Unauthenticated
from aigos.server.platform.admin_token import PLATFORM_TOKEN_PREFIX
from aigos.server.platform.models import PlatformToken
from aigos.server.tenancy import scopes
from aigos.server.tenancy.models import ApiKey, Tenant

API_KEY_PREFIX = "aigos_sk_"
PrincipalKind = Literal["api_key", "platform", "session", "agent"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request.

    ``tenant_id`` is None only for the platform admin, who acts across tenants.
    ``actor_id`` names the caller in logs and the audit trail (``api_key:<id>``, ``platform:<name>``).
    """

    kind: PrincipalKind
    actor_id: str
    tenant_id: uuid.UUID | None
    scopes: frozenset[str]
    api_key_id: uuid.UUID | None = None
    plan_tier: str | None = None
    rate_limit_rpm: int | None = None
    rate_limit_rph: int | None = None

    @property
    def is_platform(self) -> bool:
        """Whether this is the platform admin."""
        return self.kind == "platform"

    def may(self, scope: str) -> bool:
        """Whether the caller holds ``scope`` (the platform admin holds every scope)."""
        return self.is_platform or scopes.grants(self.scopes, scope)


def invalid_credential(detail: str, code: str = "INVALID_CREDENTIALS") -> Unauthenticated:
    """A 401 that tells the client to authenticate with a bearer token."""
    return Unauthenticated(detail, code=code, headers={"WWW-Authenticate": 'Bearer realm="aigos"'})


async def resolve(session: AsyncSession, token: str, pepper: bytes) -> Principal:
    """The principal behind ``token``, or a 401/403 saying why there is none."""
    if token.startswith(API_KEY_PREFIX):
        return await _api_key_principal(session, token, pepper)
    if token.startswith(PLATFORM_TOKEN_PREFIX):
        return await _platform_principal(session, token, pepper)
    raise invalid_credential("The bearer token is not an AIGOS credential.")


async def _platform_principal(session: AsyncSession, token: str, pepper: bytes) -> Principal:
    row = (
        await session.execute(
            select(PlatformToken.name).where(
                PlatformToken.token_hash == secrets.digest(token, pepper), PlatformToken.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None:
        raise invalid_credential("Unknown or revoked platform token.")
    return Principal(kind="platform", actor_id=f"platform:{row.name}", tenant_id=None, scopes=frozenset())


async def _api_key_principal(session: AsyncSession, token: str, pepper: bytes) -> Principal:
    row = await _find_api_key(session, secrets.digest(token, pepper))
    if row is None:
        raise invalid_credential("Unknown API key.", code="INVALID_API_KEY")
    now = utcnow()
    if row["revoked_at"] is not None:
        raise invalid_credential("This API key was revoked.", code="API_KEY_REVOKED")
    if _passed(row["expires_at"], now):
        raise invalid_credential("This API key has expired.", code="API_KEY_EXPIRED")
    if _passed(row["grace_expires_at"], now):
        raise invalid_credential(
            "This API key was rotated and its grace period is over.", code="API_KEY_EXPIRED"
        )
    if row["tenant_status"] != "active":
        raise Forbidden("The tenant is suspended.", code="TENANT_SUSPENDED")
    return Principal(
        kind="api_key",
        actor_id=f"api_key:{row['id']}",
        tenant_id=row["tenant_id"],
        scopes=frozenset(row["scopes"] or ()),
        api_key_id=row["id"],
        plan_tier=row["plan_tier"],
        rate_limit_rpm=row["rate_limit_rpm"],
        rate_limit_rph=row["rate_limit_rph"],
    )


def _passed(moment: datetime | None, now: datetime) -> bool:
    return moment is not None and moment <= now


async def _find_api_key(session: AsyncSession, key_hash: str) -> dict[str, Any] | None:
    """Find a key by hash before any tenant is known.

    On PostgreSQL row-level security hides every key until the tenant is set, so the look-up goes through
    ``aigos_find_api_key``, a SECURITY DEFINER function returning only the row with this exact hash.
    """
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        result = await session.execute(text("SELECT * FROM aigos_find_api_key(:h)"), {"h": key_hash})
        found = result.mappings().first()
        return _normalise(dict(found)) if found is not None else None
    stmt = (
        select(
            ApiKey.id,
            ApiKey.tenant_id,
            ApiKey.key_prefix,
            ApiKey.scopes,
            ApiKey.environment,
            ApiKey.rate_limit_rpm,
            ApiKey.rate_limit_rph,
            ApiKey.expires_at,
            ApiKey.revoked_at,
            ApiKey.grace_expires_at,
            Tenant.status.label("tenant_status"),
            Tenant.plan_tier,
        )
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == key_hash)
    )
    found = (await session.execute(stmt)).mappings().first()
    return dict(found) if found is not None else None


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    # The raw function result bypasses the ORM column types: JSONB may arrive as text.
    if isinstance(row.get("scopes"), str):
        import json

        row["scopes"] = json.loads(row["scopes"])
    return row
