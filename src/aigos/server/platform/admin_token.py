"""The bootstrap platform-admin token: created on first start, shown once, stored only as a hash."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

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
        existing = await session.scalar(select(PlatformToken.id).where(PlatformToken.name == BOOTSTRAP_NAME))
    if existing is not None:
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
        found = await session.scalar(
            select(PlatformToken.id).where(
                PlatformToken.token_hash == secrets.digest(token, pepper),
                PlatformToken.revoked_at.is_(None),
            )
        )
    return found is not None
