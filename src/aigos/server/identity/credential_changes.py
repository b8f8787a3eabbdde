"""Adding, rotating and revoking an agent's credentials, with what must go with each change: the event on
the tenant's log (in the caller's transaction) and, for a secret that stops or changes, every replica
told to forget it from its client cache.

The replicas are told before the commit, like token revocations: if the commit then failed, a replica
would ask the database for a secret it could have served from its cache, never the other way round.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.agents import AgentStatus
from aigos.server.audit.events import by
from aigos.server.audit.log import EventLog
from aigos.server.errors import Conflict
from aigos.server.identity import agents, credentials
from aigos.server.identity.schemas import CredentialCreated, CredentialIn
from aigos.server.identity.state import IdentityState
from aigos.server.principal import Principal

#: Statuses in which an agent may get new credentials.
_MODIFIABLE = (AgentStatus.ACTIVE.value, AgentStatus.PAUSED.value, AgentStatus.SUSPENDED.value)


def _tenant(principal: Principal) -> uuid.UUID:
    assert principal.tenant_id is not None
    return principal.tenant_id


async def add(
    session: AsyncSession,
    events: EventLog,
    pepper: bytes,
    principal: Principal,
    agent_id: uuid.UUID,
    spec: CredentialIn,
) -> CredentialCreated:
    """A new client secret for the agent (shown once), or, with ``public_jwk``, a key for
    ``private_key_jwt``; 409 ``AGENT_NOT_MODIFIABLE`` for an agent that may no longer get any."""
    agent = await agents.get(session, _tenant(principal), agent_id)
    if agent.status not in _MODIFIABLE:
        raise Conflict(
            f"The agent is {agent.status}; it cannot get credentials.", code="AGENT_NOT_MODIFIABLE"
        )
    if spec.public_jwk is not None:
        created = await credentials.add_public_key(
            session, agent.tenant_id, agent.id, spec.name, spec.public_jwk
        )
    else:
        created = await credentials.issue_secret(session, pepper, agent.tenant_id, agent.id, spec.name)
    data = {"credential_id": str(created.id), "kind": created.kind}
    await events.record(by(principal, "agent.credential_created", data, agent_id=str(agent.id)), session)
    return created


async def rotate(
    session: AsyncSession,
    events: EventLog,
    identity: IdentityState,
    pepper: bytes,
    principal: Principal,
    agent_id: uuid.UUID,
    credential_id: uuid.UUID,
    grace_seconds: int,
) -> CredentialCreated:
    """A successor secret (shown once); the old one works ``grace_seconds`` longer (0: stops now)."""
    await agents.get(session, _tenant(principal), agent_id)
    created = await credentials.rotate_secret(
        session, pepper, _tenant(principal), agent_id, credential_id, grace_seconds
    )
    await identity.announce_client_changed(credential_id)
    data = {
        "credential_id": str(credential_id),
        "successor_id": str(created.id),
        "grace_seconds": grace_seconds,
    }
    await events.record(by(principal, "agent.credential_rotated", data, agent_id=str(agent_id)), session)
    return created


async def revoke(
    session: AsyncSession,
    events: EventLog,
    identity: IdentityState,
    principal: Principal,
    agent_id: uuid.UUID,
    credential_id: uuid.UUID,
) -> None:
    """Stop the credential now: the token endpoint refuses it from here on, on every replica."""
    await credentials.revoke(session, _tenant(principal), agent_id, credential_id)
    await identity.announce_client_changed(credential_id)
    data = {"credential_id": str(credential_id)}
    await events.record(by(principal, "agent.credential_revoked", data, agent_id=str(agent_id)), session)
