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
from aigos.server.principal import Principal
from aigos.server.tenancy import api_keys, scopes, users
from aigos.server.tenancy.models import Tenant, TenantMember
from aigos.server.tenancy.passwords import Passwords
from aigos.server.tenancy.schemas import ApiKeyIn, MemberOut, SignupIn, SignupOut, TenantOut, TenantUpdate


async def signup(
    session: AsyncSession, pepper: bytes, passwords: Passwords, spec: SignupIn, principal: Principal | None
) -> SignupOut:
    """Create a tenant, make the user its owner, and issue its first (admin) API key.

    Signup never takes over an account: an address that already belongs to a user (registered, or merely
    invited by some tenant) becomes the owner only if ``owner_password`` is that account's password, the
    proof a person owns several tenants. Otherwise the answer is 409 ``EMAIL_TAKEN``, one answer for a
    registered and an invited address and for a wrong password, costing the same argon2 work as a new
    account. That the address is in use is the one thing it tells, as any service with unique sign-in
    addresses does without e-mail verification; anonymous signups are rate-limited per source address,
    which bounds such probing. An invited person joins through their invitation, never through signup.
    """
    if spec.plan_tier not in (None, "free") and (principal is None or not principal.is_platform):
        raise Forbidden("Only the platform admin can choose a paid plan.", code="PLATFORM_ONLY")
    existing = await users.find_user_id(session, spec.owner_email)
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
    try:
        user_id = existing or await users.create(
            session, spec.owner_email, await passwords.hash(spec.owner_password)
        )
    except IntegrityError as exc:
        # A concurrent signup took the address first: the same answer as any taken address.
        raise _email_taken() from exc
    now = utcnow()
    member = TenantMember(
        tenant_id=tenant.id, user_id=user_id, role="owner", created_at=now, updated_at=now, accepted_at=now
    )
    session.add(member)
    await session.flush()
    if existing is not None:
        # Checked once the user is a member of the new tenant (the only hash the transaction may read);
        # a refusal rolls back the tenant and the membership with it.
        owner = await users.member_password(session, tenant.id, spec.owner_email)
        stored = owner.password_hash if owner is not None else None
        if stored is None or not await passwords.verify(stored, spec.owner_password):
            raise _email_taken()
    key = await api_keys.issue(
        session,
        pepper,
        tenant.id,
        ApiKeyIn(name="Owner key", scopes=[scopes.ADMIN], environment=spec.api_key_environment),
        created_by=f"user:{user_id}",
    )
    return SignupOut(
        tenant=TenantOut.model_validate(tenant),
        owner=MemberOut(
            user_id=user_id,
            email=spec.owner_email,
            role="owner",
            invited=False,
            created_at=member.created_at,
            updated_at=member.updated_at,
        ),
        api_key=key,
    )


def _email_taken() -> Conflict:
    return Conflict(
        "This email cannot sign up with this password. If the account is yours, use its password; "
        "if you were invited, accept the invitation instead.",
        code="EMAIL_TAKEN",
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


#: Tenant setting: an agent may register only with a verified Golden Thread (its own or its asset card's).
REQUIRE_VERIFIED_GOLDEN_THREAD = "require_verified_golden_thread"


async def requires_verified_golden_thread(session: AsyncSession, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant refuses agents whose Golden Thread is missing or does not verify."""
    settings = await session.scalar(select(Tenant.settings).where(Tenant.id == tenant_id))
    return bool((settings or {}).get(REQUIRE_VERIFIED_GOLDEN_THREAD, False))


async def plan_tier_of(session: AsyncSession, tenant_id: uuid.UUID) -> str | None:
    """The tenant's plan tier, for work done on its behalf outside a request (``None``: no such tenant)."""
    tier: str | None = await session.scalar(select(Tenant.plan_tier).where(Tenant.id == tenant_id))
    return tier


async def page(session: AsyncSession, *, page: int, limit: int) -> tuple[list[Tenant], int]:
    """Every tenant, for the platform admin."""
    await set_platform_scope(session)
    return await paged(session, select(Tenant).order_by(Tenant.created_at, Tenant.id), page, limit)
