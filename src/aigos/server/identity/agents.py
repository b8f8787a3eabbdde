"""The agent registry: create, read, list, change, and move agents through their status lifecycle.

Every query names the tenant; on PostgreSQL row-level security stands behind it.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import delegation, goldenthread
from aigos.core.agents import AgentStatus, Capabilities
from aigos.server.db.paging import paged
from aigos.server.db.types import utcnow
from aigos.server.errors import Conflict, Forbidden, NotFound, ValidationFailed
from aigos.server.identity.models import Agent
from aigos.server.identity.schemas import AgentIn, AgentOut, AgentUpdate, GoldenThreadIn, Lineage
from aigos.server.tenancy.locks import lock_tenant
from aigos.server.tenancy.plans import enforce_limit, plan_of

#: Heartbeats are expected about every 30 s; an agent is online within two, stale within ten.
ONLINE_WITHIN = timedelta(seconds=60)
STALE_WITHIN = timedelta(minutes=5)
_HEX = re.compile(r"^[0-9a-f]{1,32}$")
#: Columns that cannot be empty: a PATCH may change them but not clear them.
_REQUIRED = frozenset({"name", "agent_type", "version", "deployment_env", "capabilities"})


def liveness(last_seen: datetime | None, now: datetime | None = None) -> str:
    """``online``, ``stale`` or ``offline``, derived from the last heartbeat."""
    if last_seen is None:
        return "offline"
    age = (now or utcnow()) - last_seen
    return "online" if age <= ONLINE_WITHIN else "stale" if age <= STALE_WITHIN else "offline"


def to_out(agent: Agent, last_seen: datetime | None = None) -> AgentOut:
    """The API form of an agent (``last_seen`` may be a heartbeat not yet written)."""
    seen = max(filter(None, (agent.last_seen_at, last_seen)), default=None)
    return AgentOut(
        id=agent.id,
        tenant_id=agent.tenant_id,
        client_id=str(agent.id),
        name=agent.name,
        email=agent.email,
        description=agent.description,
        agent_type=agent.agent_type,
        version=agent.version,
        owner=agent.owner,
        deployment_env=agent.deployment_env,
        status=AgentStatus(agent.status),
        liveness=liveness(seen),
        capabilities=agent.capabilities,
        asset_card_id=agent.asset_card_id,
        golden_thread=agent.golden_thread,
        lineage=Lineage(parent_id=agent.parent_id, depth=agent.lineage_depth),
        metadata=agent.metadata_,
        last_seen_at=seen,
        last_auth_at=agent.last_auth_at,
        created_at=agent.created_at,
        updated_at=agent.updated_at,
    )


def golden_thread_record(spec: GoldenThreadIn | None) -> dict[str, Any] | None:
    """The stored Golden Thread, verified when the approval fields are given (``None`` for none)."""
    if spec is None:
        return None
    record: dict[str, Any] = {"hash": spec.hash, "ticket_id": spec.ticket_id, "verified": False}
    if spec.approved_by and spec.approved_at:
        try:
            result = goldenthread.verify(spec.hash, spec.ticket_id, spec.approved_by, spec.approved_at)
        except ValueError:
            result = goldenthread.Verification(False, None)
        record.update(
            verified=result.verified,
            form=result.form,
            approved_by=spec.approved_by,
            approved_at=spec.approved_at,
        )
    return record


async def count_registered(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """Agents that count against the plan: all but terminated and archived ones."""
    stmt = select(func.count()).where(
        Agent.tenant_id == tenant_id,
        Agent.status.not_in([AgentStatus.TERMINATED.value, AgentStatus.ARCHIVED.value]),
    )
    return int(await session.scalar(stmt) or 0)


async def create(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    plan_tier: str | None,
    spec: AgentIn,
    max_depth: int,
    *,
    bound: tuple[dict[str, Any], dict[str, Any] | None] | None = None,
) -> Agent:
    """Register an agent in the tenant, within the plan's agent limit. ``bound`` replaces the spec's
    capabilities and Golden Thread record with what its asset card allows (``aigrc.binding``)."""
    await lock_tenant(session, tenant_id)
    enforce_limit(plan_of(plan_tier), "agents", await count_registered(session, tenant_id))
    depth = 0
    capabilities = bound[0] if bound is not None else spec.capabilities.model_dump()
    if spec.parent_id is not None:
        parent = await get(session, tenant_id, spec.parent_id)
        depth = parent.lineage_depth + 1
        if depth > max_depth:
            raise Forbidden(
                f"Lineage depth {depth} exceeds the limit of {max_depth}.",
                code="DEPTH_EXCEEDED",
                limit=max_depth,
            )
        _within_parent(parent, capabilities)
    now = utcnow()
    agent = Agent(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name=spec.name,
        email=spec.email,
        description=spec.description,
        agent_type=spec.agent_type,
        version=spec.version,
        owner=spec.owner,
        deployment_env=spec.deployment_env,
        status=AgentStatus.ACTIVE.value,
        capabilities=capabilities,
        asset_card_id=spec.asset_card_id,
        golden_thread=bound[1] if bound is not None else golden_thread_record(spec.golden_thread),
        parent_id=spec.parent_id,
        lineage_depth=depth,
        metadata_=spec.metadata,
        created_at=now,
        updated_at=now,
    )
    session.add(agent)
    await _flush_unique_email(session, spec.email)
    return agent


async def _flush_unique_email(session: AsyncSession, email: str | None) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"An agent with email {email!r} exists in this tenant.", code="AGENT_EMAIL_TAKEN"
        ) from exc


async def get(session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> Agent:
    """The tenant's agent; 404 ``AGENT_NOT_FOUND`` for anything else."""
    agent = await session.scalar(select(Agent).where(Agent.id == agent_id, Agent.tenant_id == tenant_id))
    if agent is None:
        raise NotFound(f"No agent {agent_id}.", code="AGENT_NOT_FOUND")
    return agent


async def page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    page: int,
    limit: int,
    status: str | None = None,
    agent_type: str | None = None,
    owner: str | None = None,
    deployment_env: str | None = None,
    query: str | None = None,
) -> tuple[list[Agent], int]:
    """One page of the tenant's agents, newest first, with the seed's filters and a text query."""
    where: list[Any] = [Agent.tenant_id == tenant_id]
    for column, value in (
        (Agent.status, status),
        (Agent.agent_type, agent_type),
        (Agent.owner, owner),
        (Agent.deployment_env, deployment_env),
    ):
        if value is not None:
            where.append(column == value)
    if query:
        # LIKE wildcards in the query are taken literally.
        pattern = "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        matches = [
            func.lower(Agent.name).like(pattern, escape="\\"),
            func.lower(func.coalesce(Agent.description, "")).like(pattern, escape="\\"),
            func.lower(func.coalesce(Agent.email, "")).like(pattern, escape="\\"),
        ]
        # Ids are compared without hyphens: SQLite stores a UUID as 32 hex digits, PostgreSQL prints 36.
        hex_digits = query.lower().replace("-", "")
        if _HEX.match(hex_digits):
            matches.append(func.replace(cast(Agent.id, String), "-", "").like(f"%{hex_digits}%"))
        where.append(or_(*matches))
    return await paged(
        session, select(Agent).where(*where).order_by(Agent.created_at.desc(), Agent.id), page, limit
    )


async def update(
    session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, spec: AgentUpdate
) -> Agent:
    """Change the given fields; refused for terminated and archived agents."""
    agent = await get(session, tenant_id, agent_id)
    if agent.status in (AgentStatus.TERMINATED.value, AgentStatus.ARCHIVED.value):
        raise Conflict(f"The agent is {agent.status} and cannot change.", code="AGENT_NOT_MODIFIABLE")
    changes = spec.model_dump(exclude_unset=True)
    cleared = sorted(field for field in _REQUIRED if field in changes and changes[field] is None)
    if cleared:
        raise ValidationFailed(
            f"/{cleared[0]}: cannot be null",
            errors=[{"pointer": f"/{field}", "detail": "cannot be null"} for field in cleared],
        )
    if changes.get("capabilities") is not None:
        await _keep_lineage_contained(session, agent, changes["capabilities"])
    for field, value in changes.items():
        if field == "capabilities":
            agent.capabilities = value
        elif field == "golden_thread":
            agent.golden_thread = golden_thread_record(spec.golden_thread)
        elif field == "metadata":
            agent.metadata_ = value or {}
        else:
            setattr(agent, field, value)
    agent.updated_at = utcnow()
    await _flush_unique_email(session, agent.email)
    return agent


async def bound_to_card(
    session: AsyncSession, tenant_id: uuid.UUID, card_id: str
) -> list[tuple[uuid.UUID, dict[str, Any] | None]]:
    """The tenant's agents registered against asset card ``card_id`` and not terminated: each id, with
    its Golden Thread record."""
    stmt = (
        select(Agent.id, Agent.golden_thread)
        .where(
            Agent.tenant_id == tenant_id,
            Agent.asset_card_id == card_id,
            Agent.status.not_in([AgentStatus.TERMINATED.value, AgentStatus.ARCHIVED.value]),
        )
        .order_by(Agent.id)
    )
    return [(row.id, row.golden_thread) for row in await session.execute(stmt)]


async def cards_of_agents(session: AsyncSession, tenant_id: uuid.UUID) -> dict[str, str]:
    """Each of the tenant's agents registered against an asset card (and not terminated): its card's id."""
    stmt = select(Agent.id, Agent.asset_card_id).where(
        Agent.tenant_id == tenant_id,
        Agent.asset_card_id.is_not(None),
        Agent.status.not_in([AgentStatus.TERMINATED.value, AgentStatus.ARCHIVED.value]),
    )
    return {str(row.id): str(row.asset_card_id) for row in await session.execute(stmt)}


async def narrow_to_card(
    session: AsyncSession, tenant_id: uuid.UUID, card_id: str, bounds: Capabilities
) -> list[uuid.UUID]:
    """Cut the capabilities of the tenant's agents registered against asset card ``card_id`` (and not
    terminated) down to ``bounds``; the ids of those that changed."""
    stmt = select(Agent).where(
        Agent.tenant_id == tenant_id,
        Agent.asset_card_id == card_id,
        Agent.status.not_in([AgentStatus.TERMINATED.value, AgentStatus.ARCHIVED.value]),
    )
    changed: list[uuid.UUID] = []
    now = utcnow()
    for agent in await session.scalars(stmt):
        narrowed = delegation.capabilities_of(agent.capabilities).narrowed_to(bounds).to_claim()
        if narrowed != delegation.capabilities_of(agent.capabilities).to_claim():
            agent.capabilities = narrowed
            agent.updated_at = now
            changed.append(agent.id)
    await session.flush()
    return changed


def _within_parent(parent: Agent, capabilities: dict[str, Any]) -> None:
    """403 ``PRIVILEGE_ESCALATION`` unless ``capabilities`` are within the parent's: a child's lineage
    claim means its parent could have delegated all it holds (the test token exchange applies too)."""
    problems = delegation.escalations(parent.capabilities, capabilities)
    if problems:
        raise Forbidden(
            f"The agent would exceed its parent {parent.id}: " + "; ".join(problems) + ".",
            code="PRIVILEGE_ESCALATION",
            parent_id=str(parent.id),
            exceeding=problems,
        )


async def _keep_lineage_contained(session: AsyncSession, agent: Agent, capabilities: dict[str, Any]) -> None:
    """New capabilities stay within the parent's and keep covering every child still in service."""
    if agent.parent_id is not None:
        _within_parent(await get(session, agent.tenant_id, agent.parent_id), capabilities)
    children = await session.scalars(
        select(Agent).where(
            Agent.tenant_id == agent.tenant_id,
            Agent.parent_id == agent.id,
            Agent.status.not_in([AgentStatus.TERMINATED.value, AgentStatus.ARCHIVED.value]),
        )
    )
    for child in children:
        problems = delegation.escalations(capabilities, child.capabilities)
        if problems:
            raise Conflict(
                f"Child agent {child.id} holds more than these capabilities would: "
                + "; ".join(problems)
                + ". Narrow or deregister the child first.",
                code="CHILD_EXCEEDS_CAPABILITIES",
                child_id=str(child.id),
                exceeding=problems,
            )
