"""Tenants: self-service signup (tenant, owner, first API key in one transaction), read and update."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.db.database import set_platform_scope, set_tenant
from aigos.server.db.paging import paged
from aigos.server.db.types import utcnow
from aigos.server.errors import Conflict, Forbidden, NotFound
from aigos.server.tenancy import api_keys, scopes
from aigos.server.tenancy.models import Tenant, TenantMember, User
from aigos.server.tenancy.passwords import Passwords
from aigos.server.tenancy.principal import Principal
from aigos.server.tenancy.schemas import ApiKeyIn, MemberOut, SignupIn, SignupOut, TenantOut, TenantUpdate


async def signup(
    session: AsyncSession, pepper: bytes, passwords: Passwords, spec: SignupIn, principal: Principal | None
) -> SignupOut:
    """Create a tenant, make the user its owner, and issue its first (admin) API key."""
    if spec.plan_tier not in (None, "free") and (principal is None or not principal.is_platform):
        raise Forbidden("Only the platform admin can choose a paid plan.", code="PLATFORM_ONLY")
    user = await session.scalar(select(User).where(User.email == spec.owner_email))
    if user is not None and user.password_hash is not None:
        # One person may own several tenants, but only by proving they are that person.
        if not await passwords.verify(user.password_hash, spec.owner_password):
            raise Conflict("This email is registered; sign up with its password.", code="EMAIL_TAKEN")
    elif user is not None:
        user.password_hash = await passwords.hash(spec.owner_password)
    else:
        user = User(
            id=uuid.uuid4(), email=spec.owner_email, password_hash=await passwords.hash(spec.owner_password)
        )
        session.add(user)
    tenant = Tenant(
        id=uuid.uuid4(),
        name=spec.name,
        slug=spec.slug,
        plan_tier=spec.plan_tier or "free",
        status="active",
        settings={},
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    await set_tenant(session, tenant.id)
    session.add(tenant)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"The slug {spec.slug!r} is taken.", code="SLUG_TAKEN") from exc
    member = TenantMember(
        tenant_id=tenant.id, user_id=user.id, role="owner", created_at=utcnow(), updated_at=utcnow()
    )
    session.add(member)
    key = await api_keys.issue(
        session,
        pepper,
        tenant.id,
        ApiKeyIn(name="Owner key", scopes=[scopes.ADMIN], environment=spec.api_key_environment),
        created_by=f"user:{user.id}",
    )
    return SignupOut(
        tenant=TenantOut.model_validate(tenant),
        owner=MemberOut(
            user_id=user.id,
            email=user.email,
            role="owner",
            invited=False,
            created_at=member.created_at,
            updated_at=member.updated_at,
        ),
        api_key=key,
    )


async def get(session: AsyncSession, principal: Principal, tenant_id: uuid.UUID) -> Tenant:
    """The tenant, if the caller may see it: its own, or any for the platform admin. Otherwise 404."""
    if principal.is_platform:
        await set_tenant(session, tenant_id)
    elif principal.tenant_id != tenant_id:
        raise NotFound(f"No tenant {tenant_id}.", code="TENANT_NOT_FOUND")
    tenant = await session.scalar(select(Tenant).where(Tenant.id == tenant_id))
    if tenant is None:
        raise NotFound(f"No tenant {tenant_id}.", code="TENANT_NOT_FOUND")
    return tenant


async def update(
    session: AsyncSession, principal: Principal, tenant_id: uuid.UUID, spec: TenantUpdate
) -> Tenant:
    """Change name and settings; plan and status only as the platform admin."""
    tenant = await get(session, principal, tenant_id)
    if (spec.plan_tier is not None or spec.status is not None) and not principal.is_platform:
        raise Forbidden("Only the platform admin can change the plan or status.", code="PLATFORM_ONLY")
    for field, value in spec.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(tenant, field, value)
    tenant.updated_at = utcnow()
    await session.flush()
    return tenant


#: Tenant setting: record allowed policy decisions as per-minute counts (denials stay one by one).
AGGREGATE_ALLOWED_DECISIONS = "aggregate_allowed_decisions"


async def aggregates_allowed_decisions(session: AsyncSession, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant asked for allowed decisions to be counted per minute instead of one by one."""
    settings = await session.scalar(select(Tenant.settings).where(Tenant.id == tenant_id))
    return bool((settings or {}).get(AGGREGATE_ALLOWED_DECISIONS, False))


async def page(session: AsyncSession, *, page: int, limit: int) -> tuple[list[Tenant], int]:
    """Every tenant, for the platform admin."""
    await set_platform_scope(session)
    return await paged(session, select(Tenant).order_by(Tenant.created_at, Tenant.id), page, limit)
