"""A trigger from the route's point of view: the commands written (``service.trigger``), and their delivery
arranged for the commit.

Delivery has two paths so that a trigger reaches every replica with or without Redis: a PostgreSQL
``NOTIFY`` sent in the trigger's own transaction (heard by the other replicas at the commit; nothing on
SQLite), and once committed the commands handed to this replica's streams and published on the bus.
"""

from __future__ import annotations

from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.audit.log import EventLog
from aigos.server.config import Settings
from aigos.server.db.commit_hooks import after_commit
from aigos.server.db.database import set_tenant
from aigos.server.identity.state import IdentityState
from aigos.server.killswitch import service
from aigos.server.killswitch.hub import Hub
from aigos.server.killswitch.schemas import TriggerIn
from aigos.server.principal import Principal


async def trigger(
    session: AsyncSession,
    hub: Hub,
    principal: Principal,
    spec: TriggerIn,
    *,
    events: EventLog,
    identity: IdentityState,
    settings: Settings,
) -> service.Triggered:
    """Trigger ``spec`` for the principal's tenant in ``session`` (the caller commits); every replica
    delivers the commands once the commit succeeded."""
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    await set_tenant(session, tenant_id)
    result = await service.trigger(
        session, principal, hub.signer, spec, events=events, identity=identity, settings=settings
    )
    # Heard by the other replicas at the commit, through PostgreSQL: Redis may be down.
    target, _ = service.TARGETS[spec.command]
    await hub.notify(session, tenant_id, [row.agent_id for row in result.rows], target.value)
    # Committed: now every replica may deliver.
    after_commit(session, partial(hub.publish, result.commands))
    return result
