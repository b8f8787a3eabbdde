"""Moving agents through their status lifecycle, with every effect that must go with it.

One piece of code for the registry's suspend / reactivate / deregister routes and for the kill switch, so
a status change always does the same things: the transition (409 when the lifecycle forbids it),
credentials revoked on termination, one event per agent recorded in the caller's transaction, and every
replica told once it is committed (this one refuses a stopped agent at once). It works on many agents in a
few statements, so a tenant-wide kill switch costs about as much as a single one. ``change_lineage_status``
does it for an agent and its descendants, or a whole tenant, with the rows locked (``lineage``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from aigos.core.agents import AgentStatus, can_transition
from aigos.server.audit.events import by
from aigos.server.audit.log import EventLog
from aigos.server.db.batches import batches
from aigos.server.db.commit_hooks import after_commit
from aigos.server.db.types import utcnow
from aigos.server.errors import Conflict
from aigos.server.identity import agents, lineage
from aigos.server.identity.models import Agent, AgentCredential
from aigos.server.identity.state import IdentityState
from aigos.server.principal import Principal


async def change_status(
    session: AsyncSession,
    events: EventLog,
    identity: IdentityState,
    principal: Principal,
    agent_id: uuid.UUID,
    target: AgentStatus,
    event_type: str,
    reason: str | None,
) -> tuple[Agent, str]:
    """Move the principal's tenant's agent to ``target``; returns the agent and its former status.

    Nothing happens (no event, no announcement) when the agent already is in ``target``.
    """
    assert principal.tenant_id is not None
    agent = await agents.get(session, principal.tenant_id, agent_id)
    (before,) = await change_statuses(
        session, events, identity, principal, [agent], target, event_type, reason
    )
    return agent, before


async def change_statuses(
    session: AsyncSession,
    events: EventLog,
    identity: IdentityState,
    principal: Principal,
    targets: Sequence[Agent],
    target: AgentStatus,
    event_type: str,
    reason: str | None,
) -> list[str]:
    """Move the principal's tenant's ``targets`` to ``target``; returns their former statuses, in order.

    409 ``INVALID_STATUS_TRANSITION`` (and nothing changed) if any of them cannot make the move.
    """
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    befores = [agent.status for agent in targets]
    for agent in targets:
        current = AgentStatus(agent.status)
        if current is not target and not can_transition(current, target):
            raise Conflict(
                f"An agent cannot go from {current.value} to {target.value}.",
                code="INVALID_STATUS_TRANSITION",
                # Not `status`: a problem document's `status` is the HTTP status and would hide this one.
                current=current.value,
                target=target.value,
            )
    moved = [agent for agent in targets if agent.status != target.value]
    stopping = target is not AgentStatus.ACTIVE
    # A stop repeated on an agent already stopped dates its status anew, here and on every replica: a
    # fleet RESUME issued before it must not lift it (``killswitch.halts``). Only a move is an event.
    touched = list(targets) if stopping else moved
    if not touched:
        return befores
    now = utcnow()
    recorded = []
    for agent in moved:
        data = {"from": agent.status, "to": target.value, "reason": reason}
        recorded.append(by(principal, event_type, data, agent_id=str(agent.id)))
    # One statement for all of them; the loaded objects are told the new values without becoming dirty
    # (the ORM would otherwise flush one UPDATE per agent).
    ids = [agent.id for agent in touched]
    for batch in batches(ids, parameters_each=1):
        await session.execute(
            update(Agent)
            .where(Agent.tenant_id == tenant_id, Agent.id.in_(batch))
            .values(status=target.value, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if target is AgentStatus.TERMINATED:
            await session.execute(
                update(AgentCredential)
                .where(
                    AgentCredential.tenant_id == tenant_id,
                    AgentCredential.agent_id.in_(batch),
                    AgentCredential.revoked_at.is_(None),
                )
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            )
    for agent in touched:
        set_committed_value(agent, "status", target.value)
        set_committed_value(agent, "updated_at", now)
    if recorded:
        # One append for all of them: durable with the caller's transaction, as EventLog.record is.
        await events.record_many(tenant_id, recorded, session)
    if stopping:
        # This replica refuses at once, before the commit: a commit that then fails errs on the safe side.
        identity.restrict(ids, target.value)
    # The others hear it once committed (a return to active must never be heard for a rollback), and the
    # answer does not wait for the bus; with PostgreSQL the kill switch's NOTIFY carries it too.
    after_commit(session, partial(identity.announce_statuses, ids, target.value, wait=False))
    return befores


async def check_transition(
    session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, target: AgentStatus
) -> None:
    """404 ``AGENT_NOT_FOUND`` unless the tenant has the agent, 409 ``INVALID_STATUS_TRANSITION`` unless
    it may move to ``target`` now (nothing is locked or changed: for a change decided now, done later)."""
    agent = await agents.get(session, tenant_id, agent_id)
    current = AgentStatus(agent.status)
    if current is not target and not can_transition(current, target):
        raise Conflict(
            f"An agent cannot go from {current.value} to {target.value}.",
            code="INVALID_STATUS_TRANSITION",
            current=current.value,
            target=target.value,
        )


@dataclass
class LineageChange:
    """The outcome of a lineage-wide status change."""

    #: The agents that took the status or already had it: the root first, then its descendants level by
    #: level (or the tenant's agents, shallowest first). Their rows stay locked until the commit.
    agent_ids: list[uuid.UUID] = field(default_factory=list)
    #: The agents left out, each with why.
    skipped: list[tuple[uuid.UUID, str]] = field(default_factory=list)


async def change_lineage_status(
    session: AsyncSession,
    events: EventLog,
    identity: IdentityState,
    principal: Principal,
    root_id: uuid.UUID | None,
    *,
    cascade: bool,
    max_depth: int,
    target: AgentStatus,
    event_type: str,
    reason: str | None,
    strict_root: bool = True,
    spare: frozenset[uuid.UUID] = frozenset(),
) -> LineageChange:
    """Move the agent ``root_id`` (with its descendants if ``cascade``), or with no root every agent of
    the principal's tenant not yet in a final status, to ``target``, their rows locked until the commit.

    The root must accept the transition (409 ``INVALID_STATUS_TRANSITION`` otherwise, 404 if unknown);
    descendants and tenant-wide targets that cannot take it (a return to active of a terminated agent, say)
    are skipped and reported. An agent already in ``target`` counts as reached. Without ``strict_root``
    the root is skipped like any other agent that cannot take the status (for a change decided earlier,
    whose root may have moved on since). Agents in ``spare`` are skipped too (a later command holds them).
    """
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    if root_id is None:
        targets = await lineage.lock_changeable(session, tenant_id)
    else:
        targets = await lineage.lock_lineage(
            session, tenant_id, root_id, cascade=cascade, max_depth=max_depth
        )
    root = targets[0] if root_id is not None else None
    result = LineageChange()
    eligible: list[Agent] = []
    for agent in targets:
        current = AgentStatus(agent.status)
        if agent.id in spare:
            result.skipped.append((agent.id, "a later command holds it"))
        elif (agent is root and strict_root) or current is target or can_transition(current, target):
            eligible.append(agent)
        else:
            result.skipped.append((agent.id, f"the agent is {current.value}"))
    # The root's transition raises 409 when the lifecycle forbids it; the others were checked above.
    await change_statuses(session, events, identity, principal, eligible, target, event_type, reason)
    result.agent_ids = [agent.id for agent in eligible]
    return result
