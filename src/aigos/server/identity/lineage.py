"""Which agents a lineage-wide status change is about, locked for the caller's transaction.

An agent and its descendants (level by level, to the bound on lineage depth), or every agent of a tenant
that can still change. The rows are locked until the commit, in id order so two callers never deadlock:
what the caller then writes per agent (a status, the kill switch's command sequences) stays exact across
replicas.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.agents import AgentStatus
from aigos.server.db.batches import batches
from aigos.server.errors import NotFound
from aigos.server.identity.models import Agent

#: Agents beyond reach of any status change: nothing can change them any more.
FINAL = (AgentStatus.TERMINATED.value, AgentStatus.ARCHIVED.value)


async def _locked(session: AsyncSession, tenant_id: uuid.UUID, *where: Any) -> list[Agent]:
    """The tenant's agents matching ``where``, locked until the commit (in id order, so never a deadlock)."""
    rows = await session.scalars(
        select(Agent).where(Agent.tenant_id == tenant_id, *where).order_by(Agent.id).with_for_update()
    )
    return list(rows.all())


async def lock_lineage(
    session: AsyncSession, tenant_id: uuid.UUID, root_id: uuid.UUID, *, cascade: bool, max_depth: int
) -> list[Agent]:
    """The agent ``root_id`` first, then (with ``cascade``) its descendants level by level, each level in
    creation order; 404 ``AGENT_NOT_FOUND`` if the tenant has no such agent."""
    roots = await _locked(session, tenant_id, Agent.id == root_id)
    if not roots:
        raise NotFound(f"No agent {root_id}.", code="AGENT_NOT_FOUND")
    found = list(roots)
    level = [roots[0].id]
    # Lineage depth is bounded by the settings, so this takes at most that many rounds.
    for _ in range(max_depth + 1 if cascade else 0):
        children = [
            child
            for batch in batches(level, parameters_each=1)
            for child in await _locked(session, tenant_id, Agent.parent_id.in_(batch))
        ]
        if not children:
            break
        found.extend(sorted(children, key=lambda a: (a.created_at, str(a.id))))
        level = [child.id for child in children]
    return found


async def lock_changeable(session: AsyncSession, tenant_id: uuid.UUID) -> list[Agent]:
    """Every agent of the tenant not yet in a final status, shallowest first, then in creation order."""
    found = await _locked(session, tenant_id, Agent.status.not_in(FINAL))
    return sorted(found, key=lambda a: (a.lineage_depth, a.created_at, str(a.id)))


async def ancestors(
    session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, *, max_depth: int
) -> tuple[uuid.UUID, ...]:
    """The agent's ancestors, parent first (empty for a root or an unknown agent).

    An agent's parent never changes once it is registered, so callers may keep the answer.
    """
    found: list[uuid.UUID] = []
    current = agent_id
    # Lineage depth is bounded by the settings: at most that many rounds.
    for _ in range(max_depth + 1):
        parent = await session.scalar(
            select(Agent.parent_id).where(Agent.tenant_id == tenant_id, Agent.id == current)
        )
        if parent is None or parent in found:
            break
        found.append(parent)
        current = parent
    return tuple(found)


async def has_descendants(session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> bool:
    """Whether any agent of the tenant names ``agent_id`` as its parent."""
    child = await session.scalar(
        select(Agent.id).where(Agent.tenant_id == tenant_id, Agent.parent_id == agent_id).limit(1)
    )
    return child is not None
