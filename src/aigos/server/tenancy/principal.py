"""Who is calling: a bearer credential resolved into a principal with tenant, scopes and actor id.

API keys and member sessions are tenancy's own tables. Platform-admin tokens are the platform context's:
only it reads ``platform_tokens``, and the look-up is given to ``resolve`` (``PlatformTokens``, wired by the
app) rather than imported. That way round because resolving a caller must know every kind of caller, while
the platform context (health, metrics, the bootstrap token) needs nothing from tenancy: tenancy depends on
a narrow interface it defines, and neither package imports the other.

``Principal`` itself lives in ``server/principal.py``, below every context; it is re-exported here only for
the modules of other contexts that still import it from here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import secrets
from aigos.server.db.types import utcnow
from aigos.server.errors import Forbidden, Unauthenticated
from aigos.server.principal import Principal as Principal
from aigos.server.tenancy import scopes
from aigos.server.tenancy.models import ApiKey, Tenant, TenantMember, UserSession

API_KEY_PREFIX = "aigos_sk_"
#: A member's sign-in session (``POST /v1/auth/login``).
SESSION_PREFIX = "aigos_sess_"


class PlatformTokens(Protocol):
    """What principal resolution asks of the platform context about its admin tokens."""

    @property
    def prefix(self) -> str:
        """How a platform-admin token begins."""
        ...

    async def find(self, session: AsyncSession, token_hash: str) -> str | None:
        """The name of the live platform token with this HMAC, if any."""
        ...


def invalid_credential(detail: str, code: str = "INVALID_CREDENTIALS") -> Unauthenticated:
    """A 401 that tells the client to authenticate with a bearer token."""
    return Unauthenticated(detail, code=code, headers={"WWW-Authenticate": 'Bearer realm="aigos"'})


async def resolve(
    session: AsyncSession, token: str, pepper: bytes, platform_tokens: PlatformTokens
) -> Principal:
    """The principal behind ``token``, or a 401/403 saying why there is none."""
    if token.startswith(API_KEY_PREFIX):
        return await _api_key_principal(session, token, pepper)
    if token.startswith(platform_tokens.prefix):
        return await _platform_principal(session, platform_tokens, token, pepper)
    if token.startswith(SESSION_PREFIX):
        return await _session_principal(session, token, pepper)
    raise invalid_credential("The bearer token is not an AIGOS credential.")


async def _platform_principal(
    session: AsyncSession, platform_tokens: PlatformTokens, token: str, pepper: bytes
) -> Principal:
    name = await platform_tokens.find(session, secrets.digest(token, pepper))
    if name is None:
        raise invalid_credential("Unknown or revoked platform token.")
    return Principal(kind="platform", actor_id=f"platform:{name}", tenant_id=None, scopes=frozenset())


async def _session_principal(session: AsyncSession, token: str, pepper: bytes) -> Principal:
    row = await _find_session(session, secrets.digest(token, pepper))
    if row is None or row["revoked_at"] is not None:
        raise invalid_credential("Unknown or ended session; sign in again.", code="INVALID_SESSION")
    if _passed(row["expires_at"], utcnow()):
        raise invalid_credential("The session has expired; sign in again.", code="SESSION_EXPIRED")
    if row["tenant_status"] != "active":
        raise Forbidden("The tenant is suspended.", code="TENANT_SUSPENDED")
    return Principal(
        kind="session",
        actor_id=f"user:{row['user_id']}",
        tenant_id=row["tenant_id"],
        scopes=scopes.ROLE_SCOPES.get(row["role"], frozenset()),
        plan_tier=row["plan_tier"],
        session_id=row["id"],
    )


async def _find_session(session: AsyncSession, token_hash: str) -> dict[str, Any] | None:
    """A session by hash, with its member's current role (removed members' sessions are not found).

    On PostgreSQL through ``aigos_find_session`` (SECURITY DEFINER), as API keys are found.
    """
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        result = await session.execute(text("SELECT * FROM aigos_find_session(:h)"), {"h": token_hash})
        found = result.mappings().first()
        return dict(found) if found is not None else None
    stmt = (
        select(
            UserSession.id,
            UserSession.tenant_id,
            UserSession.user_id,
            TenantMember.role,
            UserSession.expires_at,
            UserSession.revoked_at,
            Tenant.status.label("tenant_status"),
            Tenant.plan_tier,
        )
        .join(Tenant, Tenant.id == UserSession.tenant_id)
        .join(
            TenantMember,
            (TenantMember.tenant_id == UserSession.tenant_id) & (TenantMember.user_id == UserSession.user_id),
        )
        .where(UserSession.token_hash == token_hash, TenantMember.accepted_at.is_not(None))
    )
    found = (await session.execute(stmt)).mappings().first()
    return dict(found) if found is not None else None


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
