"""Routes of the agent registry (admin plane), registration, credentials, and the agent's heartbeat."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.agents import AgentStatus
from aigos.server.audit.log import EventLog
from aigos.server.deps import EventsDep, SessionDep, SettingsDep, UsageDep
from aigos.server.errors import NotFound
from aigos.server.identity import agents, credential_changes, credentials, lifecycle, registration
from aigos.server.identity.agent_auth import AgentDep, issuer_for
from aigos.server.identity.deps import AgentSeenDep, CredentialUsedDep, IdentityStateDep, SigningKeysDep
from aigos.server.identity.models import Agent
from aigos.server.identity.schemas import (
    AgentIn,
    AgentOut,
    AgentPage,
    AgentUpdate,
    CredentialCreated,
    CredentialIn,
    CredentialOut,
    DeploymentEnv,
    Registered,
    RotateCredentialIn,
    StatusChange,
)
from aigos.server.identity.state import IdentityState
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.tenancy.deps import require_tenant

router = APIRouter(prefix="/v1/agents", tags=["agents"], route_class=ValidatedRoute)

Reader = Annotated[Principal, Depends(require_tenant("agents:read"))]
Writer = Annotated[Principal, Depends(require_tenant("agents:write"))]
PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]


def _tenant(principal: Principal) -> uuid.UUID:
    assert principal.tenant_id is not None
    return principal.tenant_id


@router.post("", response_model=AgentOut, status_code=status.HTTP_201_CREATED, summary="Create an agent")
async def create_agent(
    spec: AgentIn,
    settings: SettingsDep,
    events: EventsDep,
    usage: UsageDep,
    seen: AgentSeenDep,
    session: SessionDep,
    principal: Writer,
) -> AgentOut:
    """Add an agent to the registry (no credential yet: add one, or use `/v1/agents/register`)."""
    agent = await registration.create(
        session, events, usage, principal, spec, max_depth=settings.max_lineage_depth
    )
    return agents.to_out(agent, seen.pending(agent.id))


@router.post("/register", response_model=Registered, status_code=status.HTTP_201_CREATED, summary="Register")
async def register_agent(
    spec: AgentIn,
    request: Request,
    settings: SettingsDep,
    keys: SigningKeysDep,
    events: EventsDep,
    usage: UsageDep,
    seen: AgentSeenDep,
    session: SessionDep,
    principal: Writer,
) -> Registered:
    """Create an agent with a client secret (shown once) and its first identity token (seed E3-S2)."""
    agent = await registration.create(
        session, events, usage, principal, spec, max_depth=settings.max_lineage_depth
    )
    first = await registration.first_credentials(
        session, keys, settings, agent, issuer_for(request, settings)
    )
    assert first.secret.client_secret is not None
    return Registered(
        agent_id=agent.id,
        client_id=str(agent.id),
        client_secret=first.secret.client_secret,
        identity_token=first.token.token,
        expires_at=datetime.fromtimestamp(first.token.claims["exp"], UTC),
        agent=agents.to_out(agent, seen.pending(agent.id)),
    )


@router.get("", response_model=AgentPage, summary="List agents")
async def list_agents(
    seen: AgentSeenDep,
    session: SessionDep,
    principal: Reader,
    page: PageNo = 1,
    limit: Limit = 20,
    status_: Annotated[AgentStatus | None, Query(alias="status")] = None,
    agent_type: Annotated[str | None, Query(max_length=50)] = None,
    owner: Annotated[str | None, Query(max_length=255)] = None,
    deployment_env: DeploymentEnv | None = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Text in name, description, email or id.")
    ] = None,
) -> AgentPage:
    """The tenant's agents, newest first, filtered."""
    rows, total = await agents.page(
        session,
        _tenant(principal),
        page=page,
        limit=limit,
        status=status_.value if status_ else None,
        agent_type=agent_type,
        owner=owner,
        deployment_env=deployment_env,
        query=q,
    )
    return AgentPage(
        agents=[agents.to_out(row, seen.pending(row.id)) for row in rows], total=total, page=page, limit=limit
    )


@router.get("/{agent_id}", response_model=AgentOut, summary="Get an agent")
async def get_agent(
    agent_id: uuid.UUID, seen: AgentSeenDep, session: SessionDep, principal: Reader
) -> AgentOut:
    """One agent of the tenant; 404 `AGENT_NOT_FOUND` otherwise."""
    agent = await agents.get(session, _tenant(principal), agent_id)
    return agents.to_out(agent, seen.pending(agent.id))


@router.patch("/{agent_id}", response_model=AgentOut, summary="Change an agent")
async def update_agent(
    agent_id: uuid.UUID,
    spec: AgentUpdate,
    identity: IdentityStateDep,
    events: EventsDep,
    seen: AgentSeenDep,
    session: SessionDep,
    principal: Writer,
) -> AgentOut:
    """Change the given fields. New capabilities apply to tokens issued from now on."""
    agent = await registration.update(session, events, identity, principal, agent_id, spec)
    return agents.to_out(agent, seen.pending(agent.id))


async def _move(
    session: AsyncSession,
    events: EventLog,
    identity: IdentityState,
    principal: Principal,
    agent_id: uuid.UUID,
    target: AgentStatus,
    event_type: str,
    reason: str | None,
) -> Agent:
    agent, _ = await lifecycle.change_status(
        session, events, identity, principal, agent_id, target, event_type, reason
    )
    return agent


@router.delete("/{agent_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Deregister an agent")
async def deregister_agent(
    agent_id: uuid.UUID,
    events: EventsDep,
    identity: IdentityStateDep,
    session: SessionDep,
    principal: Writer,
) -> Response:
    """The agent stops working at once (`terminated`, credentials revoked); record and history stay."""
    target, event_type = AgentStatus.TERMINATED, "agent.deregistered"
    await _move(session, events, identity, principal, agent_id, target, event_type, None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{agent_id}/suspend", response_model=AgentOut, summary="Suspend an agent")
async def suspend_agent(
    agent_id: uuid.UUID,
    events: EventsDep,
    identity: IdentityStateDep,
    seen: AgentSeenDep,
    session: SessionDep,
    principal: Writer,
    spec: StatusChange | None = None,
) -> AgentOut:
    """Refuse the agent's tokens until it is reactivated."""
    reason = spec.reason if spec else None
    target, event_type = AgentStatus.SUSPENDED, "agent.suspended"
    agent = await _move(session, events, identity, principal, agent_id, target, event_type, reason)
    return agents.to_out(agent, seen.pending(agent.id))


@router.post("/{agent_id}/reactivate", response_model=AgentOut, summary="Reactivate an agent")
async def reactivate_agent(
    agent_id: uuid.UUID,
    events: EventsDep,
    identity: IdentityStateDep,
    seen: AgentSeenDep,
    session: SessionDep,
    principal: Writer,
    spec: StatusChange | None = None,
) -> AgentOut:
    """Let a suspended (or paused) agent work again."""
    reason = spec.reason if spec else None
    target, event_type = AgentStatus.ACTIVE, "agent.reactivated"
    agent = await _move(session, events, identity, principal, agent_id, target, event_type, reason)
    return agents.to_out(agent, seen.pending(agent.id))


@router.get("/{agent_id}/credentials", response_model=list[CredentialOut], summary="List credentials")
async def list_credentials(
    agent_id: uuid.UUID, used: CredentialUsedDep, session: SessionDep, principal: Reader
) -> list[CredentialOut]:
    """The agent's client secrets and public keys (never the secrets themselves), each with its last use."""
    await agents.get(session, _tenant(principal), agent_id)
    rows = await credentials.list_for(session, _tenant(principal), agent_id)
    return [credentials.to_out(row, used.pending(row.id)) for row in rows]


@router.post(
    "/{agent_id}/credentials",
    response_model=CredentialCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Add a credential",
)
async def add_credential(
    agent_id: uuid.UUID,
    spec: CredentialIn,
    settings: SettingsDep,
    events: EventsDep,
    session: SessionDep,
    principal: Writer,
) -> CredentialCreated:
    """A new client secret (shown once), or, with `public_jwk`, a key for `private_key_jwt`."""
    return await credential_changes.add(session, events, settings.pepper, principal, agent_id, spec)


@router.post(
    "/{agent_id}/credentials/{credential_id}/rotate",
    response_model=CredentialCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Rotate a client secret",
)
async def rotate_credential(
    agent_id: uuid.UUID,
    credential_id: uuid.UUID,
    settings: SettingsDep,
    events: EventsDep,
    identity: IdentityStateDep,
    session: SessionDep,
    principal: Writer,
    spec: RotateCredentialIn | None = None,
) -> CredentialCreated:
    """A successor secret (shown once); the old one works until the grace period ends (0: stops now)."""
    grace = spec.grace_seconds if spec and spec.grace_seconds is not None else None
    if grace is None:
        grace = settings.credential_rotation_grace_seconds
    return await credential_changes.rotate(
        session, events, identity, settings.pepper, principal, agent_id, credential_id, grace
    )


@router.delete(
    "/{agent_id}/credentials/{credential_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a credential",
)
async def revoke_credential(
    agent_id: uuid.UUID,
    credential_id: uuid.UUID,
    events: EventsDep,
    identity: IdentityStateDep,
    session: SessionDep,
    principal: Writer,
) -> Response:
    """The token endpoint refuses this credential from now on."""
    await credential_changes.revoke(session, events, identity, principal, agent_id, credential_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class Heartbeat(BaseModel):
    """The agent's answer to a heartbeat."""

    agent_id: uuid.UUID
    status: AgentStatus
    server_time: datetime


@router.post("/{agent_id}/heartbeat", response_model=Heartbeat, summary="Heartbeat (agent token)")
async def heartbeat(agent_id: uuid.UUID, seen: AgentSeenDep, agent: AgentDep) -> Heartbeat:
    """The agent says it is alive; `last_seen_at` is updated in batches, not one write per beat."""
    if agent.agent_id != agent_id:
        raise NotFound(f"No agent {agent_id}.", code="AGENT_NOT_FOUND")
    seen.touch(agent.tenant_id, agent.agent_id)
    return Heartbeat(agent_id=agent.agent_id, status=agent.status, server_time=datetime.now(UTC))
