"""Members' sign-in: email, password and tenant in, a short-lived bearer session out; sign-out ends it.

Sessions are stored (as HMACs) so every replica accepts and ends them alike; a session carries no scopes of
its own: each request takes the member's current role (``scopes.ROLE_SCOPES``), so a demotion or removal
takes effect at once. One answer for every failure (unknown tenant, unknown email, not yet joined, wrong
password), so sign-in reveals nothing about who belongs where.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import secrets
from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow
from aigos.server.principal import Principal
from aigos.server.tenancy import scopes, users
from aigos.server.tenancy.models import UserSession
from aigos.server.tenancy.passwords import Passwords
from aigos.server.tenancy.principal import SESSION_PREFIX, invalid_credential
from aigos.server.tenancy.schemas import LoginIn, LoginOut

#: Verified when there is no hash to check, so a wrong email costs as long as a wrong password.
_DECOY_PASSWORD = "not-a-password-of-anyone"


class Decoy:
    """One argon2 hash per process, made on first use, to verify against when the member is unknown."""

    _hash: str | None = None

    @classmethod
    async def hash(cls, passwords: Passwords) -> str:
        """The decoy hash (computed once)."""
        if cls._hash is None:
            cls._hash = await passwords.hash(_DECOY_PASSWORD)
        return cls._hash


async def login(
    session: AsyncSession, pepper: bytes, passwords: Passwords, spec: LoginIn, ttl_seconds: int
) -> LoginOut:
    """A new session for the member, or 401 ``INVALID_CREDENTIALS`` for any failure."""
    tenant_id = await users.find_tenant(session, spec.tenant)
    member = None
    if tenant_id is not None:
        await set_tenant(session, tenant_id)
        member = await users.member_password(session, tenant_id, spec.email)
    stored = member.password_hash if member is not None else None
    matches = await passwords.verify(stored or await Decoy.hash(passwords), spec.password)
    if tenant_id is None or member is None or stored is None or member.accepted_at is None or not matches:
        raise invalid_credential("Wrong email, password or tenant.", code="INVALID_CREDENTIALS")
    token = secrets.mint(SESSION_PREFIX)
    now = utcnow()
    expires_at = now + timedelta(seconds=ttl_seconds)
    session.add(
        UserSession(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            user_id=member.user_id,
            token_hash=secrets.digest(token, pepper),
            created_at=now,
            expires_at=expires_at,
        )
    )
    await session.flush()
    return LoginOut(
        token=token,
        expires_at=expires_at,
        tenant_id=tenant_id,
        user_id=member.user_id,
        role=member.role,
        scopes=sorted(scopes.ROLE_SCOPES.get(member.role, frozenset())),
    )


async def logout(session: AsyncSession, principal: Principal) -> None:
    """End the caller's session on every replica (the next request with it gets 401)."""
    await session.execute(
        update(UserSession)
        .where(UserSession.id == principal.session_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
