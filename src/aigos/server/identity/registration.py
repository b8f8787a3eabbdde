"""Registering and changing agents: the registry entry, counted against the tenant's usage and recorded
on its log, for a self-registration the agent's first client secret and identity token, and changes
that every replica's client cache must hear of.

One piece of code for the registry's routes and the AGNTCY import, so every way in does the same things.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.aigrc import binding
from aigos.server.audit.events import by
from aigos.server.audit.log import EventLog
from aigos.server.config import Settings
from aigos.server.db.commit_hooks import after_commit
from aigos.server.errors import Forbidden
from aigos.server.identity import agents, credentials, tokens
from aigos.server.identity.keys import SigningKeys
from aigos.server.identity.models import Agent
from aigos.server.identity.schemas import AgentIn, AgentUpdate, CredentialCreated
from aigos.server.identity.state import IdentityState
from aigos.server.principal import Principal
from aigos.server.telemetry import metrics
from aigos.server.tenancy import tenants
from aigos.server.tenancy.usage import UsageMeter


async def create(
    session: AsyncSession,
    events: EventLog,
    usage: UsageMeter,
    principal: Principal,
    spec: AgentIn,
    *,
    max_depth: int,
    source: str | None = None,
) -> Agent:
    """Add the principal's tenant's agent, count the registration and record ``agent.registered`` (with
    ``source`` when the agent came from elsewhere, such as an OASF record)."""
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    bound = await _bound(session, tenant_id, spec)
    agent = await agents.create(session, tenant_id, principal.plan_tier, spec, max_depth, bound=bound)
    usage.count(tenant_id, "agent_registrations")
    if metrics.enabled:
        after_commit(session, partial(metrics.increment, metrics.REGISTRATIONS))
    data = {
        "name": agent.name,
        "agent_type": agent.agent_type,
        "parent_id": str(agent.parent_id or "") or None,
    }
    if source is not None:
        data["source"] = source
    if agent.asset_card_id:
        data["asset_card_id"] = agent.asset_card_id
    await events.record(by(principal, "agent.registered", data, agent_id=str(agent.id)), session)
    return agent


async def _bound(
    session: AsyncSession, tenant_id: uuid.UUID, spec: AgentIn
) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """The capabilities and Golden Thread the agent's asset card allows (``None``: no card), and the
    tenant's rule on unverified Golden Threads applied."""
    required = await tenants.requires_verified_golden_thread(session, tenant_id)
    thread = agents.golden_thread_record(spec.golden_thread)
    if spec.asset_card_id is None:
        if required and not (thread and thread.get("verified")):
            raise Forbidden(
                "The tenant requires a verified Golden Thread: state one, or register against an asset card "
                "that carries one.",
                code="GOLDEN_THREAD_UNVERIFIED",
            )
        return None
    bound = await binding.bind(
        session,
        tenant_id,
        spec.asset_card_id,
        spec.capabilities.model_dump(),
        thread,
        asked_for_capabilities="capabilities" in spec.model_fields_set,
        require_verified=required,
    )
    return bound.capabilities, bound.golden_thread


async def update(
    session: AsyncSession,
    events: EventLog,
    identity: IdentityState,
    principal: Principal,
    agent_id: uuid.UUID,
    spec: AgentUpdate,
) -> Agent:
    """Change the given fields of the principal's tenant's agent and record ``agent.updated``."""
    assert principal.tenant_id is not None
    changes = spec.model_dump(exclude_unset=True)
    if changes.get("capabilities") is not None or changes.get("asset_card_id") is not None:
        # New capabilities, or a new card, are held to the card as at registration.
        current = await agents.get(session, principal.tenant_id, agent_id)
        card_id = changes.get("asset_card_id") or current.asset_card_id
        if card_id is not None:
            await binding.bind(
                session,
                principal.tenant_id,
                card_id,
                changes.get("capabilities") or current.capabilities,
                current.golden_thread,
                asked_for_capabilities=True,
                require_verified=False,
            )
    agent = await agents.update(session, principal.tenant_id, agent_id, spec)
    # New capabilities must reach the next token on every replica: drop cached clients of this agent.
    await identity.announce_agent_changed(agent.id)
    changed = sorted(spec.model_dump(exclude_unset=True))
    await events.record(by(principal, "agent.updated", {"fields": changed}, agent_id=str(agent.id)), session)
    return agent


@dataclass(frozen=True, slots=True)
class FirstCredentials:
    """What a self-registered agent starts with: a client secret (shown once) and an identity token."""

    secret: CredentialCreated
    token: tokens.Issued


async def first_credentials(
    session: AsyncSession, keys: SigningKeys, settings: Settings, agent: Agent, issuer: str
) -> FirstCredentials:
    """A client secret for ``agent`` and its first identity token, signed with the active key."""
    secret = await credentials.issue_secret(session, settings.pepper, agent.tenant_id, agent.id)
    claims = tokens.claims_for(agent, issuer, settings.token_ttl_seconds)
    return FirstCredentials(secret, tokens.sign(keys, claims))
