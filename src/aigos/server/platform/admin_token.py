"""The bootstrap platform-admin token: created on first start, shown once, stored only as a hash."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import secrets
from aigos.server.db import Database
from aigos.server.platform.models import PlatformToken

PLATFORM_TOKEN_PREFIX = "aigos_pat_"
BOOTSTRAP_NAME = "bootstrap"


async def ensure_bootstrap_token(database: Database, pepper: bytes, preset: str | None = None) -> str | None:
    """Create the bootstrap token unless one exists; return it in clear only when this call created it.

    Several processes may start at once; the unique name lets exactly one of them win.
    """
    async with database.session() as session:
        if await _token_named(session, BOOTSTRAP_NAME):
            return None
    token = preset or secrets.mint(PLATFORM_TOKEN_PREFIX)
    try:
        async with database.session() as session:
            session.add(
                PlatformToken(
                    name=BOOTSTRAP_NAME,
                    token_prefix=secrets.display_prefix(token, PLATFORM_TOKEN_PREFIX),
                    token_hash=secrets.digest(token, pepper),
                )
            )
    except IntegrityError:
        return None
    return token


async def is_platform_token(database: Database, token: str, pepper: bytes) -> bool:
    """Whether ``token`` is a live platform-admin token."""
    async with database.session() as session:
        return await find_platform_token(session, secrets.digest(token, pepper)) is not None


def _postgres(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


async def find_platform_token(session: AsyncSession, token_hash: str) -> str | None:
    """The name of the live platform token with this HMAC, if any.

    On PostgreSQL the application role cannot read ``platform_tokens``; ``aigos_find_platform_token``
    (SECURITY DEFINER) answers this one question.
    """
    if _postgres(session):
        name = await session.scalar(text("SELECT aigos_find_platform_token(:h)"), {"h": token_hash})
        return str(name) if name is not None else None
    return await session.scalar(
        select(PlatformToken.name).where(
            PlatformToken.token_hash == token_hash, PlatformToken.revoked_at.is_(None)
        )
    )


class PlatformTokens:
    """The look-up the platform context offers principal resolution (tenancy's ``PlatformTokens``)."""

    prefix = PLATFORM_TOKEN_PREFIX

    async def find(self, session: AsyncSession, token_hash: str) -> str | None:
        """The name of the live platform token with this HMAC, if any."""
        return await find_platform_token(session, token_hash)


async def _token_named(session: AsyncSession, name: str) -> bool:
    if _postgres(session):
        return bool(await session.scalar(text("SELECT aigos_platform_token_named(:n)"), {"n": name}))
    return await session.scalar(select(PlatformToken.id).where(PlatformToken.name == name)) is not None
