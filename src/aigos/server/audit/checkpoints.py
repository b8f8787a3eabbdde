"""Sealing: turning a tenant's current head into a signed checkpoint (Merkle tree head)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import auditlog
from aigos.core.merkle import CompactRange
from aigos.core.signing import Signer
from aigos.server.audit.chain import isoformat
from aigos.server.audit.models import AuditCheckpoint, AuditHead
from aigos.server.db import Database
from aigos.server.db.database import set_platform_scope, set_tenant
from aigos.server.db.types import utcnow


def to_json(checkpoint: AuditCheckpoint) -> dict[str, object]:
    """The signed checkpoint as published and exported."""
    payload = auditlog.checkpoint_payload(
        str(checkpoint.tenant_id),
        checkpoint.tree_size,
        checkpoint.root_hash,
        checkpoint.head_hash,
        checkpoint.issued_at,
        checkpoint.key_id,
    )
    return {**payload, "signature": checkpoint.signature}


async def latest(session: AsyncSession, tenant_id: uuid.UUID) -> AuditCheckpoint | None:
    """The tenant's newest checkpoint."""
    return await session.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.tenant_id == tenant_id)
        .order_by(AuditCheckpoint.tree_size.desc())
        .limit(1)
    )


async def seal(session: AsyncSession, signer: Signer, tenant_id: uuid.UUID) -> AuditCheckpoint | None:
    """A checkpoint at the tenant's current head (the existing one if the head is already sealed)."""
    await set_tenant(session, tenant_id)
    head = await session.scalar(select(AuditHead).where(AuditHead.tenant_id == tenant_id))
    if head is None or head.seq == 0:
        return None
    return await seal_at(
        session, signer, tenant_id, head.seq, head.hash, CompactRange.from_json(head.compact_range)
    )


async def seal_at(
    session: AsyncSession,
    signer: Signer,
    tenant_id: uuid.UUID,
    size: int,
    head_hash: str,
    compact: CompactRange,
) -> AuditCheckpoint | None:
    """A checkpoint of the tenant's log at ``size`` entries, whose chain head is ``head_hash`` and whose
    Merkle compact range through that entry is ``compact`` (the existing one if that size is sealed).

    The caller has set the tenant on the session and vouches for ``head_hash`` and ``compact``: ``seal``
    takes them from the head row, retention from the entries it is about to prune.
    """
    if size != compact.size:
        raise ValueError(f"compact range of size {compact.size} given for a checkpoint at {size}")
    existing = await session.scalar(
        select(AuditCheckpoint).where(
            AuditCheckpoint.tenant_id == tenant_id, AuditCheckpoint.tree_size == size
        )
    )
    if existing is not None:
        return existing
    payload = auditlog.checkpoint_payload(
        str(tenant_id), size, compact.root().hex(), head_hash, isoformat(utcnow()), signer.key_id
    )
    values = {
        "tenant_id": tenant_id,
        "tree_size": size,
        "root_hash": payload["root_hash"],
        "head_hash": head_hash,
        "issued_at": payload["issued_at"],
        "key_id": signer.key_id,
        "signature": signer.sign(payload),
        "compact_range": compact.to_json(),
    }
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    # Two processes may seal the same head at once: the first row stands, the other insert does nothing.
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(AuditCheckpoint).values(values)
    await session.execute(ins.on_conflict_do_nothing(index_elements=["tenant_id", "tree_size"]))
    return await session.scalar(
        select(AuditCheckpoint).where(
            AuditCheckpoint.tenant_id == tenant_id, AuditCheckpoint.tree_size == size
        )
    )


async def unsealed_tenants(session: AsyncSession) -> list[uuid.UUID]:
    """Tenants whose head is newer than their latest checkpoint (reads across tenants: platform scope)."""
    await set_platform_scope(session)
    sealed = (
        select(AuditCheckpoint.tenant_id, func.max(AuditCheckpoint.tree_size).label("size"))
        .group_by(AuditCheckpoint.tenant_id)
        .subquery()
    )
    stmt = (
        select(AuditHead.tenant_id)
        .outerjoin(sealed, sealed.c.tenant_id == AuditHead.tenant_id)
        .where(AuditHead.seq > func.coalesce(sealed.c.size, 0))
    )
    return list((await session.scalars(stmt)).all())


async def seal_all(database: Database, signer: Signer) -> int:
    """Sign a checkpoint for every tenant with unsealed entries, each in its own transaction; returns how
    many were sealed."""
    async with database.session() as session:
        tenants = await unsealed_tenants(session)
    for tenant_id in tenants:
        async with database.session() as session:
            await seal(session, signer, tenant_id)
    return len(tenants)
