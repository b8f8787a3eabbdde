"""API keys: create (shown once), list, revoke, rotate with a grace period. Always scoped by tenant."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import secrets
from aigos.server.db.paging import paged
from aigos.server.db.types import utcnow
from aigos.server.errors import Conflict, Forbidden, NotFound
from aigos.server.principal import Principal
from aigos.server.tenancy.locks import lock_tenant
from aigos.server.tenancy.models import ApiKey
from aigos.server.tenancy.plans import enforce_limit, plan_of
from aigos.server.tenancy.principal import API_KEY_PREFIX
from aigos.server.tenancy.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut


def key_status(key: ApiKey, now: datetime | None = None) -> str:
    """``active``, ``grace`` (rotated, still working), ``expired`` or ``revoked``."""
    now = now or utcnow()
    if key.revoked_at is not None:
        return "revoked"
    if (key.expires_at is not None and key.expires_at <= now) or (
        key.grace_expires_at is not None and key.grace_expires_at <= now
    ):
        return "expired"
    return "grace" if key.grace_expires_at is not None else "active"


def to_out(key: ApiKey, last_used: datetime | None = None) -> ApiKeyOut:
    """The listed form of a key, with a use not yet flushed taken into account."""
    out = ApiKeyOut.model_validate({**_columns(key), "status": key_status(key)})
    if last_used is not None and (out.last_used_at is None or last_used > out.last_used_at):
        out.last_used_at = last_used
    return out


def _columns(key: ApiKey) -> dict[str, object]:
    return {column: getattr(key, column) for column in ApiKeyOut.model_fields if hasattr(key, column)}


async def count_live(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """Keys of the tenant that still work (they count against the plan)."""
    now = utcnow()
    stmt = select(func.count()).where(
        ApiKey.tenant_id == tenant_id,
        ApiKey.revoked_at.is_(None),
        (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now),
        (ApiKey.grace_expires_at.is_(None)) | (ApiKey.grace_expires_at > now),
    )
    return int(await session.scalar(stmt) or 0)


async def issue(
    session: AsyncSession,
    pepper: bytes,
    tenant_id: uuid.UUID,
    spec: ApiKeyIn,
    *,
    created_by: str | None,
    rotated_from: uuid.UUID | None = None,
) -> ApiKeyCreated:
    """Mint and store a key; the returned object carries the secret once."""
    secret = secrets.mint(f"{API_KEY_PREFIX}{spec.environment}_")
    key = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        key_hash=secrets.digest(secret, pepper),
        key_prefix=secrets.display_prefix(secret, f"{API_KEY_PREFIX}{spec.environment}_"),
        name=spec.name,
        scopes=list(spec.scopes),
        environment=spec.environment,
        rate_limit_rpm=spec.rate_limit_rpm,
        rate_limit_rph=spec.rate_limit_rph,
        expires_at=spec.expires_at,
        created_at=utcnow(),
        created_by=created_by,
        rotated_from=rotated_from,
    )
    session.add(key)
    await session.flush()
    return ApiKeyCreated.model_validate({**to_out(key).model_dump(), "key": secret})


async def create(session: AsyncSession, pepper: bytes, principal: Principal, spec: ApiKeyIn) -> ApiKeyCreated:
    """A new key for the caller's tenant, with no scope the caller does not hold itself."""
    assert principal.tenant_id is not None
    beyond = [scope for scope in spec.scopes if not principal.may(scope)]
    if beyond:
        raise Forbidden(
            f"A key cannot grant scopes its creator lacks: {', '.join(beyond)}.",
            code="SCOPE_ESCALATION",
            scopes=beyond,
        )
    await lock_tenant(session, principal.tenant_id)
    enforce_limit(plan_of(principal.plan_tier), "api_keys", await count_live(session, principal.tenant_id))
    return await issue(session, pepper, principal.tenant_id, spec, created_by=principal.actor_id)


async def get(session: AsyncSession, tenant_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    """The tenant's key ``key_id``; 404 for any other tenant's key."""
    key = await session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id))
    if key is None:
        raise NotFound(f"No API key {key_id}.", code="API_KEY_NOT_FOUND")
    return key


async def page(
    session: AsyncSession, tenant_id: uuid.UUID, *, page: int, limit: int, include_revoked: bool
) -> tuple[list[ApiKey], int]:
    """One page of the tenant's keys, newest first, and the total."""
    where = [ApiKey.tenant_id == tenant_id]
    if not include_revoked:
        where.append(ApiKey.revoked_at.is_(None))
    return await paged(
        session, select(ApiKey).where(*where).order_by(ApiKey.created_at.desc(), ApiKey.id), page, limit
    )


def _refuse_escalation(principal: Principal, key: ApiKey, action: str) -> None:
    """403 ``SCOPE_ESCALATION`` unless the caller holds every scope of ``key``.

    Revoking or rotating a key is power over everything it may do: a narrower key must not be able to
    lock out (or replace) a broader one, such as the owner's admin key.
    """
    if any(not principal.may(scope) for scope in key.scopes):
        raise Forbidden(f"A key cannot be {action} by a caller with fewer scopes.", code="SCOPE_ESCALATION")


async def revoke(session: AsyncSession, principal: Principal, key_id: uuid.UUID) -> ApiKey:
    """Stop a key at once (idempotent); the row stays for the record. Needs every scope the key holds."""
    assert principal.tenant_id is not None
    key = await get(session, principal.tenant_id, key_id)
    _refuse_escalation(principal, key, "revoked")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


async def rotate(
    session: AsyncSession,
    pepper: bytes,
    principal: Principal,
    key_id: uuid.UUID,
    grace_seconds: int,
) -> ApiKeyCreated:
    """A successor with the same attributes; the old key keeps working for ``grace_seconds``, then stops."""
    assert principal.tenant_id is not None
    old = await get(session, principal.tenant_id, key_id)
    status = key_status(old)
    if status != "active":
        raise Conflict(f"Only an active key can be rotated; this one is {status}.", code="API_KEY_NOT_ACTIVE")
    _refuse_escalation(principal, old, "rotated")
    now = utcnow()
    if grace_seconds == 0:
        old.revoked_at = now
    else:
        old.grace_expires_at = now + timedelta(seconds=grace_seconds)
    spec = ApiKeyIn(
        name=old.name,
        scopes=list(old.scopes),
        environment=old.environment,
        expires_at=old.expires_at,
        rate_limit_rpm=old.rate_limit_rpm,
        rate_limit_rph=old.rate_limit_rph,
    )
    return await issue(
        session, pepper, principal.tenant_id, spec, created_by=principal.actor_id, rotated_from=old.id
    )
