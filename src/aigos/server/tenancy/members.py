"""Tenant members: list, invite, change role, remove. Always scoped by tenant.

Adding a member never attaches anyone by itself: it creates a pending membership and a single-use
invitation token (shown once to the admin, who hands it to the person). Only the token's holder joins the
tenant, by accepting it (``tenancy.invitations``). The answer is the same whether or not the address
already belongs to a registered user, so adding members cannot be used to probe who is registered.

Every query names ``tenant_id`` itself: on SQLite that is the only isolation, on PostgreSQL row-level
security is a second wall behind it. A tenant always keeps at least one owner; the checks that guard this
lock the tenant's owner rows first, so two concurrent demotions cannot both pass on PostgreSQL (SQLite
serialises writers anyway and ignores ``FOR UPDATE``).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.db.types import utcnow
from aigos.server.errors import Conflict, Forbidden, NotFound
from aigos.server.principal import Principal
from aigos.server.tenancy import invitations, scopes, users
from aigos.server.tenancy.locks import dialect_of, lock_tenant, take_sqlite_write_lock
from aigos.server.tenancy.models import TenantMember, User
from aigos.server.tenancy.plans import enforce_limit, plan_of
from aigos.server.tenancy.schemas import MemberIn, MemberInvited, MemberOut, MemberUpdate

OWNER = "owner"
#: The user columns a membership shows; never ``password_hash`` (the application role cannot read it).
_USER = (User.id, User.email)


def to_out(member: TenantMember, user_id: uuid.UUID, email: str) -> MemberOut:
    """The API form of a membership; ``invited`` until the person has accepted their invitation."""
    return MemberOut.model_validate(
        {
            "user_id": user_id,
            "email": email,
            "role": member.role,
            "invited": member.accepted_at is None,
            "created_at": member.created_at,
            "updated_at": member.updated_at,
        }
    )


def _tenant_of(principal: Principal) -> uuid.UUID:
    if principal.tenant_id is None:
        raise Forbidden("Use a tenant's API key for this endpoint.", code="TENANT_REQUIRED")
    return principal.tenant_id


def _require_owner_level(principal: Principal, action: str) -> None:
    # API keys belong to no user, so "owner-level" means holding the admin scope.
    if not principal.may(scopes.ADMIN):
        raise Forbidden(
            f"Only a key with the `{scopes.ADMIN}` scope may {action}.",
            code="INSUFFICIENT_SCOPE",
            scope=scopes.ADMIN,
        )


def _not_found(user_id: uuid.UUID) -> NotFound:
    return NotFound(f"No member {user_id}.", code="MEMBER_NOT_FOUND")


async def count(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """How many members the tenant has (they count against the plan)."""
    stmt = select(func.count()).select_from(TenantMember).where(TenantMember.tenant_id == tenant_id)
    return int(await session.scalar(stmt) or 0)


async def page(
    session: AsyncSession, tenant_id: uuid.UUID, *, page: int, limit: int
) -> tuple[list[MemberOut], int]:
    """One page of the tenant's members, oldest first, and the total."""
    total = await count(session, tenant_id)
    rows = await session.execute(
        select(TenantMember, *_USER)
        .join(User, User.id == TenantMember.user_id)
        .where(TenantMember.tenant_id == tenant_id)
        .order_by(TenantMember.created_at, TenantMember.user_id)
        .offset((page - 1) * limit)
        .limit(limit)
    )
    return [to_out(member, user_id, email) for member, user_id, email in rows], total


async def _find(session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID) -> tuple[TenantMember, str]:
    row = (
        await session.execute(
            select(TenantMember, User.email)
            .join(User, User.id == TenantMember.user_id)
            .where(TenantMember.tenant_id == tenant_id, TenantMember.user_id == user_id)
        )
    ).first()
    if row is None:
        # A member of another tenant only is "not found" too: its existence is not ours to reveal.
        raise _not_found(user_id)
    member, email = row
    return member, email


async def get(session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID) -> MemberOut:
    """The tenant's member ``user_id``; 404 for anyone who is not a member of this tenant."""
    member, email = await _find(session, tenant_id, user_id)
    return to_out(member, user_id, email)


async def _lock_owners(session: AsyncSession, tenant_id: uuid.UUID) -> set[uuid.UUID]:
    """Lock the tenant's owner rows until the transaction ends and return their user ids.

    Counting happens in Python because PostgreSQL refuses ``FOR UPDATE`` with an aggregate. The stable
    order makes concurrent lockers take the rows in the same sequence, so they queue instead of deadlocking.
    """
    await take_sqlite_write_lock(session, tenant_id)
    stmt = (
        select(TenantMember.user_id)
        .where(TenantMember.tenant_id == tenant_id, TenantMember.role == OWNER)
        .order_by(TenantMember.user_id)
        .with_for_update()
    )
    return set((await session.scalars(stmt)).all())


async def _ensure_user(session: AsyncSession, email: str) -> uuid.UUID:
    """The id of the user with ``email``, created without a password if there is none.

    ``ON CONFLICT DO NOTHING`` lets two concurrent invitations of a new address both succeed: the loser of
    the race waits for the winner and then reads its row, instead of failing on the unique email.
    """
    values = {"id": uuid.uuid4(), "email": email, "password_hash": None, "created_at": utcnow()}
    if dialect_of(session) == "postgresql":
        await session.execute(postgresql.insert(User).values(values).on_conflict_do_nothing())
    else:
        await session.execute(sqlite.insert(User).values(values).on_conflict_do_nothing())
    user_id = await users.find_user_id(session, email)
    assert user_id is not None
    return user_id


async def add(
    session: AsyncSession, pepper: bytes, principal: Principal, spec: MemberIn, invitation_ttl: int
) -> MemberInvited:
    """Invite ``spec.email`` into the caller's tenant: a pending membership and a single-use token.

    The person joins only by accepting the token. Inviting someone still pending issues a fresh token
    (the earlier one stops working). 409 ``MEMBER_EXISTS`` if already a member who joined; 403
    ``PLAN_LIMIT_EXCEEDED`` past the plan's member limit; 403 ``INSUFFICIENT_SCOPE`` for an ``owner``
    without the admin scope.
    """
    tenant_id = _tenant_of(principal)
    if spec.role == OWNER:
        _require_owner_level(principal, "add an owner")
    await lock_tenant(session, tenant_id)
    existing = await session.scalar(
        select(TenantMember)
        .join(User, User.id == TenantMember.user_id)
        .where(TenantMember.tenant_id == tenant_id, User.email == spec.email)
    )
    now = utcnow()
    if existing is not None and existing.accepted_at is not None:
        raise Conflict(
            f"{spec.email} is already a member.", code="MEMBER_EXISTS", user_id=str(existing.user_id)
        )
    if existing is not None:
        member = existing
        member.role, member.updated_at = spec.role, now
    else:
        enforce_limit(plan_of(principal.plan_tier), "members", await count(session, tenant_id))
        user_id = await _ensure_user(session, spec.email)
        member = TenantMember(
            tenant_id=tenant_id, user_id=user_id, role=spec.role, created_at=now, updated_at=now
        )
        session.add(member)
    try:
        await session.flush()
    except IntegrityError as exc:
        # Only a concurrent addition of the same user gets here; the request's transaction is rolled back.
        raise Conflict(f"{spec.email} is already a member.", code="MEMBER_EXISTS") from exc
    token = await invitations.issue(
        session,
        pepper,
        tenant_id,
        member.user_id,
        created_by=principal.actor_id,
        expires_at=now + timedelta(seconds=invitation_ttl),
    )
    out = to_out(member, member.user_id, spec.email)
    return MemberInvited.model_validate(
        {
            **out.model_dump(),
            "invitation_token": token,
            "invitation_expires_at": now + timedelta(seconds=invitation_ttl),
        }
    )


async def change_role(
    session: AsyncSession, principal: Principal, user_id: uuid.UUID, spec: MemberUpdate
) -> MemberOut:
    """Give member ``user_id`` the role ``spec.role``.

    Making or unmaking an owner needs the admin scope (403 ``INSUFFICIENT_SCOPE``); demoting the last
    owner is refused with 409 ``LAST_OWNER``.
    """
    tenant_id = _tenant_of(principal)
    # Owners first, then the member: every writer locks in this order, so none waits on another's row.
    owners = await _lock_owners(session, tenant_id)
    member, email = await _find(session, tenant_id, user_id)
    if member.role == spec.role:
        return to_out(member, user_id, email)
    if OWNER in (member.role, spec.role):
        _require_owner_level(principal, "make or unmake an owner")
    if member.role == OWNER and not owners - {user_id}:
        raise Conflict(
            "A tenant needs at least one owner; make another member owner first.", code="LAST_OWNER"
        )
    member.role = spec.role
    member.updated_at = utcnow()
    await session.flush()
    return to_out(member, user_id, email)


async def remove(session: AsyncSession, principal: Principal, user_id: uuid.UUID) -> None:
    """Remove member ``user_id`` from the tenant; the user stays (they may belong to other tenants).

    Removing an owner needs the admin scope (403 ``INSUFFICIENT_SCOPE``); the last owner cannot be removed
    (409 ``LAST_OWNER``).
    """
    tenant_id = _tenant_of(principal)
    owners = await _lock_owners(session, tenant_id)
    member, _email = await _find(session, tenant_id, user_id)
    if member.role == OWNER:
        _require_owner_level(principal, "remove an owner")
        if not owners - {user_id}:
            raise Conflict(
                "A tenant needs at least one owner; make another member owner first.", code="LAST_OWNER"
            )
    await session.delete(member)
    await session.flush()
