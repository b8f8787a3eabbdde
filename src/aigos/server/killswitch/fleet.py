"""Fleet commands in the database: issuing one for a tenant or a lineage, the per-agent bookkeeping that
follows it, acknowledgements and reads (no HTTP here).

A tenant-wide trigger, or one for an agent with descendants (``cascade``), is decided once: one signed
``FleetCommand`` row and its audit event, committed with the trigger; every replica then halts the scope
in memory (``halts``) and its policy checks deny from there. The per-agent part (statuses through
identity's lifecycle, so tokens and credentials behave as for any status change; one delivery record per
agent) is the *bookkeeping*, done after the answer in its own transaction, which also sets
``bookkeeping_done_at``. Fleet commands of a tenant are bookkept in sequence order, one row at a time, the
row locked (``FOR UPDATE SKIP LOCKED``), so two replicas never do the same row and a RESUME's bookkeeping
never runs before the PAUSE's it follows.

Ordering with other commands (the fleet halt wins until a RESUME at least as wide lifts it):

- a fleet RESUME of the tenant lifts every PAUSE halt of the tenant; one of a lineage lifts the PAUSE halts
  rooted at its root or below it;
- a RESUME that would contradict a wider halt still in force (a single agent's, or a lineage's, during a
  tenant or an enclosing lineage halt) is refused with 409 ``FLEET_HALT_ACTIVE``;
- a TERMINATE halt is never lifted: it ends when its bookkeeping has terminated every agent it covers;
- PAUSE and TERMINATE of single agents during a halt are issued as usual (they only restrict further).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast, get_args

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.agents import AgentStatus
from aigos.core.commands import (
    ACK_OUTCOMES,
    ALG,
    LINEAGE_SCOPE,
    TENANT_SCOPE,
    FleetCommand,
    covers,
    format_time,
    lineage_scope,
    sign_fleet_command,
    tenant_scope,
)
from aigos.core.signing import Signer
from aigos.server.audit.events import NewEvent, by, current_request_id
from aigos.server.audit.log import EventLog
from aigos.server.db.batches import batches
from aigos.server.db.commit_hooks import after_commit
from aigos.server.db.paging import paged
from aigos.server.db.types import utcnow
from aigos.server.errors import Conflict, NotFound
from aigos.server.identity import lifecycle, lineage
from aigos.server.identity.state import IdentityState
from aigos.server.killswitch.models import FleetCommand as FleetRow
from aigos.server.killswitch.models import FleetDelivery, KillSwitchCommand
from aigos.server.principal import Principal, PrincipalKind
from aigos.server.telemetry import metrics
from aigos.server.tenancy.locks import dialect_of

HALTS = ("PAUSE", "TERMINATE")
#: What each command makes of the agent, and the event that records the status change.
TARGETS: dict[str, tuple[AgentStatus, str]] = {
    "TERMINATE": (AgentStatus.TERMINATED, "agent.terminated"),
    "PAUSE": (AgentStatus.PAUSED, "agent.paused"),
    "RESUME": (AgentStatus.ACTIVE, "agent.resumed"),
}


def signed(row: FleetRow) -> FleetCommand:
    """The fleet command as agents receive it (rebuilt from its row; the stored signature covers it)."""
    scope = tenant_scope() if row.root_agent_id is None else lineage_scope(str(row.root_agent_id))
    return FleetCommand(
        command_id=str(row.id),
        tenant_id=str(row.tenant_id),
        scope=scope,
        command=row.command,
        reason=row.reason,
        issued_at=format_time(row.issued_at),
        expires_at=format_time(row.expires_at),
        nonce=row.nonce,
        sequence=row.sequence,
        key_id=row.key_id,
        alg=ALG,
        signature=row.signature,
    )


class FleetHaltActive(Conflict):
    """A RESUME narrower than a fleet halt that covers its target."""

    code = "FLEET_HALT_ACTIVE"
    title = "A fleet halt covers the agent"


@dataclass
class Issued:
    """A fleet command written in the caller's transaction, and the halts it lifted."""

    row: FleetRow
    lifted: list[uuid.UUID]

    @property
    def command(self) -> FleetCommand:
        """The signed command."""
        return signed(self.row)


async def _active(session: AsyncSession, tenant_id: uuid.UUID) -> list[FleetRow]:
    rows = await session.scalars(
        select(FleetRow).where(FleetRow.tenant_id == tenant_id, FleetRow.active.is_(True))
    )
    return list(rows.all())


async def refuse_if_halted(
    session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, *, max_depth: int
) -> None:
    """409 ``FLEET_HALT_ACTIVE`` if a fleet halt in force covers ``agent_id`` (before a narrower RESUME)."""
    active = await _active(session, tenant_id)
    if not active:
        return
    above = tuple(str(a) for a in await lineage.ancestors(session, tenant_id, agent_id, max_depth=max_depth))
    for row in active:
        if covers(signed(row).scope, str(agent_id), above):
            raise FleetHaltActive(
                f"The fleet {row.command} {row.id} covers agent {agent_id}; lift it with a RESUME of the "
                "same scope or of the whole tenant.",
                fleet_command_id=str(row.id),
            )


async def issue(
    session: AsyncSession,
    principal: Principal,
    signer: Signer,
    *,
    command: str,
    reason: str,
    root_id: uuid.UUID | None,
    ttl_seconds: int,
    max_depth: int,
    events: EventLog,
) -> Issued:
    """Write one signed fleet command for the tenant (``root_id`` None) or the lineage of ``root_id``, and
    its event (the caller holds the tenant lock and commits). Agents are not touched here."""
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    if root_id is not None:
        target, _ = target_of(command)
        await lifecycle.check_transition(session, tenant_id, root_id, target)
    lifted: list[FleetRow] = []
    if command == "RESUME":
        active = await _active(session, tenant_id)
        if root_id is None:
            lifted = [row for row in active if row.command == "PAUSE"]
        else:
            above = {
                str(a) for a in await lineage.ancestors(session, tenant_id, root_id, max_depth=max_depth)
            }
            for row in active:
                scope = signed(row).scope
                # Its own halt it lifts, unless a TERMINATE (never lifted): anything wider it contradicts.
                own = row.root_agent_id == root_id and row.command == "PAUSE"
                if covers(scope, str(root_id), tuple(above)) and not own:
                    raise FleetHaltActive(
                        f"The fleet {row.command} {row.id} covers agent {root_id}; lift it with a RESUME "
                        "of the same scope or of the whole tenant.",
                        fleet_command_id=str(row.id),
                    )
            for row in active:
                if row.command != "PAUSE" or row.root_agent_id is None:
                    continue
                if row.root_agent_id == root_id or str(root_id) in {
                    str(a)
                    for a in await lineage.ancestors(
                        session, tenant_id, row.root_agent_id, max_depth=max_depth
                    )
                }:
                    lifted.append(row)
    top = await session.scalar(select(func.max(FleetRow.sequence)).where(FleetRow.tenant_id == tenant_id))
    now = utcnow()
    issued = now.replace(microsecond=now.microsecond // 1000 * 1000)
    expires = issued + timedelta(seconds=ttl_seconds)
    command_id = uuid.uuid4()
    scope = tenant_scope() if root_id is None else lineage_scope(str(root_id))
    fleet = sign_fleet_command(
        signer,
        command_id=str(command_id),
        tenant_id=str(tenant_id),
        scope=scope,
        command=command,
        reason=reason,
        issued_at=issued,
        expires_at=expires,
        nonce=secrets.token_hex(16),
        sequence=int(top or 0) + 1,
    )
    row = FleetRow(
        id=command_id,
        tenant_id=tenant_id,
        scope_kind=TENANT_SCOPE if root_id is None else LINEAGE_SCOPE,
        root_agent_id=root_id,
        command=command,
        reason=reason,
        sequence=fleet.sequence,
        nonce=fleet.nonce,
        issued_at=issued,
        expires_at=expires,
        key_id=fleet.key_id,
        signature=fleet.signature,
        issued_by=principal.actor_id,
        issuer_kind=principal.kind,
        active=command in HALTS,
    )
    session.add(row)
    for old in lifted:
        old.active = False
        old.lifted_by = command_id
    await session.flush()
    data: dict[str, Any] = {
        "command_id": str(command_id),
        "command": command,
        "reason": reason,
        "scope": scope,
        "sequence": fleet.sequence,
        "all_agents": root_id is None,
        "cascade": True,
        "fleet": True,
        "lifted": [str(old.id) for old in lifted],
    }
    await events.record(
        by(principal, "kill_switch.triggered", data, agent_id=None if root_id is None else str(root_id)),
        session,
    )
    return Issued(row, [old.id for old in lifted])


def target_of(command: str) -> tuple[AgentStatus, str]:
    """The status ``command`` gives agents, and the event that records it."""
    return TARGETS[command]


# -- bookkeeping ------------------------------------------------------------------------------------


async def tenants_with_unfinished(session: AsyncSession) -> list[uuid.UUID]:
    """Tenants with a fleet command whose bookkeeping is not done (read with the platform scope)."""
    rows = await session.scalars(
        select(FleetRow.tenant_id).where(FleetRow.bookkeeping_done_at.is_(None)).distinct()
    )
    return list(rows.all())


async def claim_next(session: AsyncSession, tenant_id: uuid.UUID) -> FleetRow | None:
    """The tenant's oldest fleet command still to bookkeep, locked for this transaction; None when there is
    none, or when another replica holds it (that one goes on with the rest of the tenant's)."""
    lowest = await session.scalar(
        select(FleetRow.id)
        .where(FleetRow.tenant_id == tenant_id, FleetRow.bookkeeping_done_at.is_(None))
        .order_by(FleetRow.sequence)
        .limit(1)
    )
    if lowest is None:
        return None
    row = await session.scalar(
        select(FleetRow)
        .where(FleetRow.id == lowest, FleetRow.bookkeeping_done_at.is_(None))
        .with_for_update(skip_locked=True)
    )
    if row is not None:
        return row
    still = await session.scalar(
        select(FleetRow.id).where(FleetRow.id == lowest, FleetRow.bookkeeping_done_at.is_(None))
    )
    # Done meanwhile (read again), or held by another replica.
    return None if still is not None else await claim_next(session, tenant_id)


async def bookkeep(
    session: AsyncSession,
    events: EventLog,
    identity: IdentityState,
    row: FleetRow,
    *,
    max_depth: int,
) -> list[uuid.UUID]:
    """Move the agents of ``row``'s scope to its status and write their delivery records, then mark it
    done (the caller holds the row locked and commits); returns the agents reached."""
    target, event_type = target_of(row.command)
    kind = row.issuer_kind if row.issuer_kind in get_args(PrincipalKind) else "platform"
    # The events are the issuer's, as if the trigger had moved the agents itself.
    actor = Principal(
        kind=cast(PrincipalKind, kind),
        actor_id=row.issued_by or "system",
        tenant_id=row.tenant_id,
        scopes=frozenset(),
    )
    spare: frozenset[uuid.UUID] = frozenset()
    if row.command == "RESUME":
        # A single agent's PAUSE or TERMINATE issued after this RESUME stands: the RESUME lifts what came
        # before it only.
        later = await session.scalars(
            select(KillSwitchCommand.agent_id).where(
                KillSwitchCommand.tenant_id == row.tenant_id,
                KillSwitchCommand.command.in_(("PAUSE", "TERMINATE")),
                KillSwitchCommand.issued_at > row.issued_at,
            )
        )
        spare = frozenset(later)
    try:
        changed = await lifecycle.change_lineage_status(
            session,
            events,
            identity,
            actor,
            row.root_agent_id,
            cascade=True,
            max_depth=max_depth,
            target=target,
            event_type=event_type,
            reason=row.reason,
            strict_root=False,
            spare=spare,
        )
        reached, skipped = changed.agent_ids, len(changed.skipped)
    except NotFound:
        # The root was deleted since: nobody left to move.
        reached, skipped = [], 0
    for batch in batches(reached, parameters_each=4):
        await session.execute(
            _insert(session)
            .values(
                [
                    {
                        "fleet_command_id": row.id,
                        "agent_id": agent_id,
                        "tenant_id": row.tenant_id,
                        "status": "pending",
                    }
                    for agent_id in batch
                ]
            )
            .on_conflict_do_nothing(index_elements=["fleet_command_id", "agent_id"])
        )
    row.bookkeeping_done_at = utcnow()
    row.targeted = len(reached)
    row.skipped = skipped
    if row.command == "TERMINATE":
        # Every agent it covers is terminated now: their statuses carry the halt from here on.
        row.active = False
    await session.flush()
    return reached


def _insert(session: AsyncSession) -> Any:
    insert = pg_insert if dialect_of(session) == "postgresql" else sqlite_insert
    return insert(FleetDelivery)


# -- deliveries and acknowledgements ----------------------------------------------------------------


async def record_deliveries(
    session: AsyncSession, tenant_id: uuid.UUID, delivered: list[tuple[uuid.UUID, uuid.UUID, datetime]]
) -> None:
    """Mark ``(fleet command, agent, when)`` delivered (the rows are created if the bookkeeping has not)."""
    for batch in batches(delivered, parameters_each=5):
        stmt = _insert(session).values(
            [
                {
                    "fleet_command_id": fleet_id,
                    "agent_id": agent_id,
                    "tenant_id": tenant_id,
                    "status": "delivered",
                    "delivered_at": at,
                }
                for fleet_id, agent_id, at in batch
            ]
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["fleet_command_id", "agent_id"],
            set_={"status": "delivered", "delivered_at": stmt.excluded.delivered_at},
            where=FleetDelivery.status == "pending",
        )
        await session.execute(stmt)


async def get(session: AsyncSession, tenant_id: uuid.UUID, command_id: uuid.UUID) -> FleetRow | None:
    """The tenant's fleet command, or None."""
    return await session.scalar(
        select(FleetRow).where(FleetRow.id == command_id, FleetRow.tenant_id == tenant_id)
    )


async def acknowledge(
    session: AsyncSession,
    events: EventLog,
    row: FleetRow,
    agent_id: uuid.UUID,
    outcome: str,
    detail: str | None,
    *,
    max_depth: int,
) -> FleetDelivery:
    """Record ``agent_id``'s acknowledgement of the fleet command ``row`` (the first one stands); 404
    ``COMMAND_NOT_FOUND`` if its scope does not cover the agent. The outcome was checked by the caller."""
    above = tuple(
        str(a) for a in await lineage.ancestors(session, row.tenant_id, agent_id, max_depth=max_depth)
    )
    if not covers(signed(row).scope, str(agent_id), above):
        raise NotFound(f"No kill-switch command {row.id}.", code="COMMAND_NOT_FOUND")
    allowed = ACK_OUTCOMES[row.command]
    assert outcome in allowed
    current = await session.get(FleetDelivery, (row.id, agent_id))
    if current is not None and current.status == "acknowledged":
        return current
    now = utcnow()
    after_commit(session, partial(metrics.acknowledged, row.issued_at, now))
    values = {
        "fleet_command_id": row.id,
        "agent_id": agent_id,
        "tenant_id": row.tenant_id,
        "status": "acknowledged",
        "delivered_at": now,
        "acknowledged_at": now,
        "ack_outcome": outcome,
        "ack_detail": detail,
    }
    stmt = _insert(session).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["fleet_command_id", "agent_id"],
        set_={
            "status": "acknowledged",
            "delivered_at": func.coalesce(FleetDelivery.delivered_at, stmt.excluded.delivered_at),
            "acknowledged_at": stmt.excluded.acknowledged_at,
            "ack_outcome": stmt.excluded.ack_outcome,
            "ack_detail": stmt.excluded.ack_detail,
        },
    )
    await session.execute(stmt)
    event = NewEvent(
        tenant_id=row.tenant_id,
        event_type="kill_switch.acknowledged",
        actor_type="agent",
        actor_id=str(agent_id),
        data={
            "command_id": str(row.id),
            "command": row.command,
            "sequence": row.sequence,
            "fleet": True,
            "outcome": outcome,
            "detail": detail,
        },
        agent_id=str(agent_id),
        outcome="success" if outcome not in ("failed", "rejected") else "failure",
        source="agent",
        request_id=current_request_id(),
    )
    await events.record(event, session)
    if current is not None:
        await session.refresh(current)
        return current
    found = await session.get(FleetDelivery, (row.id, agent_id))
    assert found is not None
    return found


# -- reads ------------------------------------------------------------------------------------------


async def counts(session: AsyncSession, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """Per fleet command: how many agents have a record, were delivered it, acknowledged it."""
    if not ids:
        return {}
    rows = await session.execute(
        select(FleetDelivery.fleet_command_id, FleetDelivery.status, func.count())
        .where(FleetDelivery.fleet_command_id.in_(ids))
        .group_by(FleetDelivery.fleet_command_id, FleetDelivery.status)
    )
    found: dict[uuid.UUID, dict[str, int]] = {
        i: {"pending": 0, "delivered": 0, "acknowledged": 0} for i in ids
    }
    for fleet_id, status, count in rows.all():
        found[fleet_id][status] = int(count)
    return found


async def page(
    session: AsyncSession, tenant_id: uuid.UUID, *, page: int, limit: int
) -> tuple[list[FleetRow], int]:
    """One page of the tenant's fleet commands, newest first."""
    stmt = select(FleetRow).where(FleetRow.tenant_id == tenant_id).order_by(FleetRow.sequence.desc())
    return await paged(session, stmt, page, limit)


async def load(session: AsyncSession) -> tuple[list[FleetRow], list[FleetRow], dict[uuid.UUID, int]]:
    """For every tenant (platform scope): the halts in force, the unexpired RESUMEs, the highest sequence."""
    active = await session.scalars(
        select(FleetRow).where(FleetRow.active.is_(True)).order_by(FleetRow.sequence)
    )
    resumes = await session.scalars(
        select(FleetRow)
        .where(FleetRow.command == "RESUME", FleetRow.expires_at > utcnow())
        .order_by(FleetRow.sequence)
    )
    tops = await session.execute(
        select(FleetRow.tenant_id, func.max(FleetRow.sequence)).group_by(FleetRow.tenant_id)
    )
    return list(active.all()), list(resumes.all()), {tenant: int(top) for tenant, top in tops.all()}


async def after(session: AsyncSession, tenant_id: uuid.UUID, sequence: int) -> list[FleetRow]:
    """The tenant's unexpired fleet commands after ``sequence``, in order (what a replica missed)."""
    rows = await session.scalars(
        select(FleetRow)
        .where(FleetRow.tenant_id == tenant_id, FleetRow.sequence > sequence, FleetRow.expires_at > utcnow())
        .order_by(FleetRow.sequence)
    )
    return list(rows.all())


async def lifted_by(session: AsyncSession, tenant_id: uuid.UUID, command_id: uuid.UUID) -> list[uuid.UUID]:
    """The halts the fleet RESUME ``command_id`` lifted."""
    rows = await session.scalars(
        select(FleetRow.id).where(FleetRow.tenant_id == tenant_id, FleetRow.lifted_by == command_id)
    )
    return list(rows.all())
