"""Look-ups of people that must work before (or beside) a tenant context, on both backends.

On PostgreSQL the application role sees no user row outside the tenant it is bound to and no password hash
at all; these go through the SECURITY DEFINER functions of migration 0008, each returning only what its
caller needs (see that migration's docstring for why each one exists). On SQLite, which has no roles, the
same questions are plain queries, and the services' own tenant scoping is the wall.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.db.types import utcnow
from aigos.server.tenancy.locks import dialect_of
from aigos.server.tenancy.models import Tenant, TenantMember, User


@dataclass(frozen=True, slots=True)
class MemberPassword:
    """What signing a member in needs: who they are, their role, their hash, whether they joined."""

    user_id: uuid.UUID
    role: str
    password_hash: str | None
    accepted_at: datetime | None


def _postgres(session: AsyncSession) -> bool:
    return dialect_of(session) == "postgresql"


async def find_user_id(session: AsyncSession, email: str) -> uuid.UUID | None:
    """The id of the user with exactly this (normalised) address, if any."""
    if _postgres(session):
        found = await session.scalar(text("SELECT aigos_find_user_id(:e)"), {"e": email})
        return uuid.UUID(str(found)) if found is not None else None
    return await session.scalar(select(User.id).where(User.email == email))


async def member_password(session: AsyncSession, tenant_id: uuid.UUID, email: str) -> MemberPassword | None:
    """The member of ``tenant_id`` with this address and their password hash; None for anyone else.

    The session must already be bound to ``tenant_id`` (PostgreSQL reads the tenant from it).
    """
    if _postgres(session):
        row = (
            (await session.execute(text("SELECT * FROM aigos_member_password(:e)"), {"e": email}))
            .mappings()
            .first()
        )
        if row is None:
            return None
        # asyncpg answers timestamptz as aware datetimes, as the ORM column type does on SQLite.
        return MemberPassword(row["user_id"], row["role"], row["password_hash"], row["accepted_at"])
    found = (
        await session.execute(
            select(User.id, TenantMember.role, User.password_hash, TenantMember.accepted_at)
            .join(TenantMember, TenantMember.user_id == User.id)
            .where(User.email == email, TenantMember.tenant_id == tenant_id)
        )
    ).first()
    return MemberPassword(*found) if found is not None else None


async def find_tenant(session: AsyncSession, key: str) -> uuid.UUID | None:
    """The id of the tenant whose slug, or id, is ``key``."""
    if _postgres(session):
        found = await session.scalar(text("SELECT aigos_find_tenant(:k)"), {"k": key})
        return uuid.UUID(str(found)) if found is not None else None
    try:
        as_id: uuid.UUID | None = uuid.UUID(key)
    except ValueError:
        as_id = None
    condition = or_(Tenant.slug == key, Tenant.id == as_id) if as_id is not None else Tenant.slug == key
    return await session.scalar(select(Tenant.id).where(condition).limit(1))


async def set_password(session: AsyncSession, user_id: uuid.UUID, password_hash: str) -> None:
    """Store a user's password hash (the application role may write the column, never read it)."""
    await session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))


async def create(session: AsyncSession, email: str, password_hash: str | None) -> uuid.UUID:
    """Insert a new user and return its id (the caller has checked the address is free)."""
    user_id = uuid.uuid4()
    session.add(User(id=user_id, email=email, password_hash=password_hash, created_at=utcnow()))
    await session.flush()
    return user_id
