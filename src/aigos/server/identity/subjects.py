"""What the identity context tells the policy context about agents: whether one is in a tenant, the
attributes policies target it by, and the subject a simulation decides for.

Identity alone reads its agent rows; the policy context asks here. Each function runs in the caller's
session (its transaction, its tenant context) and reads, never locks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.assetcard import AGENT_LABEL
from aigos.core.policy import Subject, labels_of
from aigos.server.identity.models import Agent


@dataclass(frozen=True, slots=True)
class Attributes:
    """An agent's targeting attributes, as stored: what a policy's selector and rules may name."""

    agent_type: str | None
    owner: str | None
    deployment_env: str | None
    labels: dict[str, str]
    #: The capabilities stored now: a token's are cut down to them, so narrowing an agent (or its asset
    #: card) takes effect at the next check, not only with its next token.
    capabilities: dict[str, Any]
    asset_card_id: str | None = None


async def exists(session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> bool:
    """Whether the tenant has an agent of this id (a policy may target it)."""
    found = await session.scalar(select(Agent.id).where(Agent.id == agent_id, Agent.tenant_id == tenant_id))
    return found is not None


async def attributes(session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> Attributes | None:
    """The agent's targeting attributes; None if the tenant has no such agent."""
    row = (
        await session.execute(
            select(
                Agent.agent_type,
                Agent.owner,
                Agent.deployment_env,
                Agent.metadata_,
                Agent.capabilities,
                Agent.asset_card_id,
            ).where(Agent.id == agent_id, Agent.tenant_id == tenant_id)
        )
    ).first()
    if row is None:
        return None
    return Attributes(
        row.agent_type,
        row.owner,
        row.deployment_env,
        labels(row.metadata_, row.asset_card_id),
        dict(row.capabilities or {}),
        row.asset_card_id,
    )


def labels(metadata: dict[str, Any] | None, asset_card_id: str | None) -> dict[str, str]:
    """An agent's labels: its metadata's, and ``aigrc_asset_card`` (the card it registered against), which
    the policies an asset card derives select it by and no metadata can set."""
    found = labels_of(metadata or {})
    found.pop(AGENT_LABEL, None)
    if asset_card_id:
        found[AGENT_LABEL] = asset_card_id
    return found


async def asset_card_of(session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> str | None:
    """The id of the asset card the agent registered against, if any."""
    card_id: str | None = await session.scalar(
        select(Agent.asset_card_id).where(Agent.id == agent_id, Agent.tenant_id == tenant_id)
    )
    return card_id


async def subject(session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> Subject | None:
    """The agent as the evaluator sees it from its record (status, capabilities, attributes); None if the
    tenant has no such agent."""
    agent = await session.scalar(select(Agent).where(Agent.id == agent_id, Agent.tenant_id == tenant_id))
    if agent is None:
        return None
    return Subject.of(
        str(agent.id),
        status=agent.status,
        capabilities=agent.capabilities,
        agent_type=agent.agent_type,
        owner=agent.owner,
        deployment_env=agent.deployment_env,
        metadata={"labels": labels(agent.metadata_, agent.asset_card_id)},
    )
