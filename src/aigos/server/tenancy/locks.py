"""Per-tenant serialisation for check-then-write operations (plan limits, last-owner rules)."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.tenancy.models import Tenant


def dialect_of(session: AsyncSession) -> str:
    """``postgresql`` or ``sqlite``."""
    return session.bind.dialect.name if session.bind is not None else "sqlite"


async def take_sqlite_write_lock(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """On SQLite, take the database's write lock now, before the reads a check depends on.

    The driver opens the transaction only at the first write, so without this two requests could both
    read the same owners (or counts) and both write. A no-op write on the tenant's row makes the
    transaction start here and wait for any other writer; later reads then see what it committed.
    """
    if dialect_of(session) != "sqlite":
        return
    # Naming updated_at keeps its onupdate from firing: nothing about the tenant changes.
    await session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(status=Tenant.status, updated_at=Tenant.updated_at)
        .execution_options(synchronize_session=False)
    )


async def lock_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Serialise this transaction with every other one that locks the same tenant, until it ends.

    Used before counting against a plan limit, so concurrent requests cannot both pass it. ``NO KEY
    UPDATE`` still lets other transactions insert rows referencing the tenant (their FK check's KEY SHARE).
    """
    await take_sqlite_write_lock(session, tenant_id)
    await session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))
