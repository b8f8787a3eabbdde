"""Single-use invitations: how a person joins a tenant, proving they hold what the admin handed them.

The token is a 256-bit secret shown once (to the admin who added the member) and stored as an HMAC, like
API keys. Accepting it joins its user to its tenant, once: a new account sets its password then; an
existing account proves itself with its own password, so a token that reached the wrong hands cannot
attach a stranger's session to someone's account. Nobody else can complete an invitation, which is what
stops the old takeover (signing up first with an invited address).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import secrets
from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow
from aigos.server.errors import BadRequest
from aigos.server.tenancy import users
from aigos.server.tenancy.locks import dialect_of
from aigos.server.tenancy.models import Invitation, TenantMember, User
from aigos.server.tenancy.passwords import Passwords
from aigos.server.tenancy.principal import invalid_credential
from aigos.server.tenancy.schemas import InvitationAccepted

INVITATION_PREFIX = "aigos_inv_"


async def issue(
    session: AsyncSession,
    pepper: bytes,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    created_by: str,
    expires_at: datetime,
) -> str:
    """A new invitation for the pending member ``user_id``; earlier unaccepted ones stop working."""
    await session.execute(
        delete(Invitation).where(
            Invitation.tenant_id == tenant_id, Invitation.user_id == user_id, Invitation.accepted_at.is_(None)
        )
    )
    token = secrets.mint(INVITATION_PREFIX)
    session.add(
        Invitation(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            user_id=user_id,
            token_hash=secrets.digest(token, pepper),
            created_at=utcnow(),
            created_by=created_by,
            expires_at=expires_at,
        )
    )
    await session.flush()
    return token


async def _find(session: AsyncSession, token_hash: str) -> dict[str, Any] | None:
    # Before the tenant is known; on PostgreSQL the definer function returns only this one row.
    if dialect_of(session) == "postgresql":
        result = await session.execute(text("SELECT * FROM aigos_find_invitation(:h)"), {"h": token_hash})
        found = result.mappings().first()
    else:
        stmt = select(
            Invitation.id,
            Invitation.tenant_id,
            Invitation.user_id,
            Invitation.expires_at,
            Invitation.accepted_at,
        ).where(Invitation.token_hash == token_hash)
        found = (await session.execute(stmt)).mappings().first()
    return dict(found) if found is not None else None


def _unusable() -> Exception:
    # One answer for unknown, used and expired tokens: a token's history is nobody's business.
    return invalid_credential("This invitation is unknown, used or expired.", code="INVALID_INVITATION")


async def accept(
    session: AsyncSession, pepper: bytes, passwords: Passwords, token: str, password: str | None
) -> InvitationAccepted:
    """Join the invitation's user to its tenant, once.

    401 ``INVALID_INVITATION`` for an unknown, used or expired token (or a membership removed since);
    400 ``PASSWORD_REQUIRED`` when a new account sets no password; 401 ``INVALID_CREDENTIALS`` when an
    existing account's password does not match.
    """
    found = await _find(session, secrets.digest(token, pepper))
    now = utcnow()
    if found is None or found["accepted_at"] is not None or found["expires_at"] <= now:
        raise _unusable()
    tenant_id, user_id = found["tenant_id"], found["user_id"]
    await set_tenant(session, tenant_id)
    email = await session.scalar(select(User.email).where(User.id == user_id))
    member = await users.member_password(session, tenant_id, email) if email is not None else None
    if member is None:
        raise _unusable()
    if member.password_hash is None:
        if password is None:
            raise BadRequest("Choose a password for your new account.", code="PASSWORD_REQUIRED")
        await users.set_password(session, user_id, await passwords.hash(password))
    elif password is None or not await passwords.verify(member.password_hash, password):
        raise invalid_credential("Accept with your account's password.", code="INVALID_CREDENTIALS")
    # Single use even under concurrency: only the request that flips accepted_at goes on.
    flipped = await session.execute(
        update(Invitation)
        .where(Invitation.id == found["id"], Invitation.accepted_at.is_(None))
        .values(accepted_at=now)
    )
    if getattr(flipped, "rowcount", 0) != 1:
        raise _unusable()
    await session.execute(
        update(TenantMember)
        .where(TenantMember.tenant_id == tenant_id, TenantMember.user_id == user_id)
        .values(accepted_at=now, updated_at=now)
    )
    return InvitationAccepted(tenant_id=tenant_id, user_id=user_id, role=member.role)
