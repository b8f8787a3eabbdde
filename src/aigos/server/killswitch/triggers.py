"""A trigger from the route's point of view: the commands written, and their delivery arranged for the
commit.

A tenant-wide trigger, or one for an agent with descendants (``cascade``), is one fleet command
(``fleet.issue``): written with its event, committed, then applied by every replica to its halts and
streams; the agents' statuses follow in the background (``fleet_sync``). A single agent's trigger writes
its command (``service.trigger``); a RESUME of it is refused while a fleet halt covers it.

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
from aigos.server.identity import lineage
from aigos.server.identity.state import IdentityState
from aigos.server.killswitch import fleet, notices, service
from aigos.server.killswitch.hub import Hub
from aigos.server.killswitch.schemas import TriggerIn
from aigos.server.principal import Principal
from aigos.server.telemetry import metrics
from aigos.server.tenancy.locks import lock_tenant


async def trigger(
    session: AsyncSession,
    hub: Hub,
    principal: Principal,
    spec: TriggerIn,
    *,
    events: EventLog,
    identity: IdentityState,
    settings: Settings,
) -> service.Triggered | fleet.Issued:
    """Trigger ``spec`` for the principal's tenant in ``session`` (the caller commits); every replica
    applies and delivers it once the commit succeeded."""
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    await set_tenant(session, tenant_id)
    # One trigger per tenant at a time, on every replica: fleet sequences and agents' sequences are drawn
    # under it, and a fleet RESUME's look at the halts in force is exact.
    await lock_tenant(session, tenant_id)
    depth = settings.max_lineage_depth
    lineage_wide = (
        spec.agent_id is not None
        and spec.cascade
        and await lineage.has_descendants(session, tenant_id, spec.agent_id)
    )
    if spec.all_agents or lineage_wide:
        issued = await fleet.issue(
            session,
            principal,
            hub.signer,
            command=spec.command,
            reason=spec.reason,
            root_id=spec.agent_id,
            ttl_seconds=settings.killswitch_command_ttl_seconds,
            max_depth=depth,
            events=events,
        )
        # Heard by the other replicas at the commit, through PostgreSQL: Redis may be down.
        await notices.send_fleet(session, hub.origin, tenant_id, issued.row.id)
        if hub.fleet is not None:
            after_commit(session, partial(hub.fleet.committed, issued))
        scope = "tenant" if spec.agent_id is None else "lineage"
        after_commit(session, partial(metrics.commands_issued, spec.command, scope))
        return issued
    if spec.command == "RESUME" and spec.agent_id is not None:
        await fleet.refuse_if_halted(session, tenant_id, spec.agent_id, max_depth=depth)
    result = await service.trigger(
        session, principal, hub.signer, spec, events=events, identity=identity, settings=settings
    )
    target, _ = fleet.TARGETS[spec.command]
    commands = result.commands
    await hub.notify(session, tenant_id, [row.agent_id for row in result.rows], target.value, commands)
    # Committed: now every replica may deliver.
    after_commit(session, partial(hub.publish, commands))
    after_commit(session, partial(metrics.commands_issued, spec.command, "agent", len(result.rows)))
    return result
