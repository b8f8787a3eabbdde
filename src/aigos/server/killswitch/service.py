"""Issuing, reading and acknowledging kill-switch commands (no HTTP here).

A single agent's trigger (or one with ``cascade`` of an agent without descendants; tenant-wide and
lineage-wide triggers are fleet commands, ``fleet``) moves the agent through the identity lifecycle
(``lifecycle.change_lineage_status``: status, credentials, event, announcement to every replica) and
writes one signed command for it, with the agent's next sequence number. Sequences are allocated while
identity holds the agents' rows locked, so two replicas triggering at once never hand out the same one
(the unique constraint stands behind that).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.commands import (
    ACK_OUTCOMES,
    ALG,
    SignedCommand,
    StreamAnchor,
    format_time,
    sign_anchor,
    sign_command,
)
from aigos.core.signing import Signer, derive_seed
from aigos.server.audit.events import NewEvent, by, current_request_id
from aigos.server.audit.log import EventLog
from aigos.server.config import Settings
from aigos.server.db.commit_hooks import after_commit
from aigos.server.db.paging import paged
from aigos.server.db.types import utcnow
from aigos.server.errors import AigosError, NotFound
from aigos.server.identity import lifecycle
from aigos.server.identity.state import IdentityState
from aigos.server.killswitch import fleet
from aigos.server.killswitch.fleet import TARGETS
from aigos.server.killswitch.models import FleetCommand, FleetDelivery, KillSwitchCommand
from aigos.server.killswitch.schemas import AckIn, CommandOut, TriggerIn
from aigos.server.principal import Principal
from aigos.server.telemetry import metrics
from aigos.server.tenancy.locks import lock_tenant


class OutcomeNotForCommand(AigosError):
    """An acknowledgement whose outcome is not one its command can have (a PAUSE ``terminated``)."""

    status = 422
    code = "OUTCOME_NOT_FOR_COMMAND"
    title = "Outcome does not fit the command"


def command_signer(pepper: bytes) -> Signer:
    """The kill-switch signing key: derived from the server secret, so every replica holds the same one."""
    return Signer.from_seed(derive_seed(pepper, "kill-switch"))


def signed(row: KillSwitchCommand) -> SignedCommand:
    """The command as the agent receives it (rebuilt from its row; the stored signature covers it)."""
    return SignedCommand(
        command_id=str(row.id),
        tenant_id=str(row.tenant_id),
        agent_id=str(row.agent_id),
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


def to_out(row: KillSwitchCommand) -> CommandOut:
    """The API form of a command."""
    return CommandOut(
        command_id=row.id,
        tenant_id=row.tenant_id,
        agent_id=row.agent_id,
        root_command_id=row.root_command_id,
        command=row.command,
        reason=row.reason,
        cascade=row.cascade,
        sequence=row.sequence,
        status=row.status,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        delivered_at=row.delivered_at,
        acknowledged_at=row.acknowledged_at,
        ack_outcome=row.ack_outcome,
        ack_detail=row.ack_detail,
        issued_by=row.issued_by,
        key_id=row.key_id,
    )


@dataclass
class Triggered:
    """The outcome of one trigger: the rows written and the agents left out."""

    issued_at: datetime
    rows: list[KillSwitchCommand] = field(default_factory=list)
    skipped: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    @property
    def commands(self) -> list[SignedCommand]:
        """The signed commands, to deliver once the transaction has committed."""
        return [signed(row) for row in self.rows]


async def _next_sequences(session: AsyncSession, agent_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Each agent's next command sequence (call with the agents' rows locked)."""
    rows = await session.execute(
        select(KillSwitchCommand.agent_id, func.max(KillSwitchCommand.sequence))
        .where(KillSwitchCommand.agent_id.in_(agent_ids))
        .group_by(KillSwitchCommand.agent_id)
    )
    highest = {agent_id: int(top or 0) for agent_id, top in rows.all()}
    return {agent_id: highest.get(agent_id, 0) + 1 for agent_id in agent_ids}


async def trigger(
    session: AsyncSession,
    principal: Principal,
    signer: Signer,
    spec: TriggerIn,
    *,
    events: EventLog,
    identity: IdentityState,
    settings: Settings,
) -> Triggered:
    """Change the affected agents' status and write one signed command each (the caller commits).

    The root agent must accept the transition (409 ``INVALID_STATUS_TRANSITION`` otherwise); cascade
    members and tenant-wide targets that cannot take it (RESUME of a terminated agent, say) are skipped and
    reported. An agent already in the target status still gets the command, so it hears it again.
    """
    assert principal.tenant_id is not None
    tenant_id = principal.tenant_id
    target, event_type = TARGETS[spec.command]
    # One trigger per tenant at a time, on every replica: a cascade and a tenant-wide trigger would
    # otherwise lock overlapping agents in different orders, and two triggers could draw one sequence.
    await lock_tenant(session, tenant_id)
    changed = await lifecycle.change_lineage_status(
        session,
        events,
        identity,
        principal,
        spec.agent_id,
        cascade=spec.cascade,
        max_depth=settings.max_lineage_depth,
        target=target,
        event_type=event_type,
        reason=spec.reason,
    )
    # Taken once the agents' rows are locked: a trigger that waited for another's locks is issued now.
    now = utcnow()
    # Milliseconds: the signed text of the time must be rebuilt exactly from the stored value.
    issued = now.replace(microsecond=now.microsecond // 1000 * 1000)
    expires = issued + timedelta(seconds=settings.killswitch_command_ttl_seconds)
    result = Triggered(issued_at=issued, skipped=changed.skipped)
    sequences = await _next_sequences(session, changed.agent_ids)
    root_command_id = uuid.uuid4()
    for agent_id in changed.agent_ids:
        command_id = root_command_id if not result.rows else uuid.uuid4()
        command = sign_command(
            signer,
            command_id=str(command_id),
            tenant_id=str(tenant_id),
            agent_id=str(agent_id),
            command=spec.command,
            reason=spec.reason,
            issued_at=issued,
            expires_at=expires,
            nonce=secrets.token_hex(16),
            sequence=sequences[agent_id],
        )
        result.rows.append(
            KillSwitchCommand(
                id=command_id,
                tenant_id=tenant_id,
                agent_id=agent_id,
                root_command_id=root_command_id,
                command=spec.command,
                reason=spec.reason,
                cascade=spec.cascade,
                sequence=command.sequence,
                nonce=command.nonce,
                issued_at=issued,
                expires_at=expires,
                key_id=command.key_id,
                signature=command.signature,
                status="pending",
                issued_by=principal.actor_id,
            )
        )
    # Core insert of every row in one statement: the ORM's unit of work costs ~60 µs an object, which a
    # tenant-wide trigger multiplies by every agent. The objects stay as they are, for the caller to read.
    columns = [column.key for column in KillSwitchCommand.__table__.columns]
    if result.rows:
        # A tenant-wide trigger may find no eligible agent: a success affecting none, recorded as such;
        # an insert of no rows is no statement SQLAlchemy can send.
        await session.execute(
            insert(KillSwitchCommand), [{key: getattr(row, key) for key in columns} for row in result.rows]
        )
    data: dict[str, Any] = {
        "command_id": str(root_command_id),
        "command": spec.command,
        "reason": spec.reason,
        "cascade": spec.cascade,
        "all_agents": spec.all_agents,
        "commands": [
            {"command_id": str(row.id), "agent_id": str(row.agent_id), "sequence": row.sequence}
            for row in result.rows
        ],
        "skipped": [{"agent_id": str(agent_id), "reason": why} for agent_id, why in result.skipped],
    }
    root_agent = str(spec.agent_id) if spec.agent_id else None
    await events.record(by(principal, "kill_switch.triggered", data, agent_id=root_agent), session)
    return result


async def get(session: AsyncSession, tenant_id: uuid.UUID, command_id: uuid.UUID) -> KillSwitchCommand:
    """The tenant's command; 404 ``COMMAND_NOT_FOUND`` otherwise."""
    row = await session.scalar(
        select(KillSwitchCommand).where(
            KillSwitchCommand.id == command_id, KillSwitchCommand.tenant_id == tenant_id
        )
    )
    if row is None:
        raise NotFound(f"No kill-switch command {command_id}.", code="COMMAND_NOT_FOUND")
    return row


async def page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    page: int,
    limit: int,
    agent_id: uuid.UUID | None = None,
    command: str | None = None,
    status: str | None = None,
    root_command_id: uuid.UUID | None = None,
) -> tuple[list[KillSwitchCommand], int]:
    """One page of the tenant's commands, newest first, filtered."""
    where: list[Any] = [KillSwitchCommand.tenant_id == tenant_id]
    for column, value in (
        (KillSwitchCommand.agent_id, agent_id),
        (KillSwitchCommand.command, command),
        (KillSwitchCommand.status, status),
        (KillSwitchCommand.root_command_id, root_command_id),
    ):
        if value is not None:
            where.append(column == value)
    stmt = (
        select(KillSwitchCommand)
        .where(*where)
        .order_by(KillSwitchCommand.issued_at.desc(), KillSwitchCommand.agent_id, KillSwitchCommand.sequence)
    )
    return await paged(session, stmt, page, limit)


async def pending(
    session: AsyncSession, tenant_id: uuid.UUID, agent_ids: list[uuid.UUID], after: int = 0
) -> list[KillSwitchCommand]:
    """Commands still to deliver to ``agent_ids``: not acknowledged, not expired, sequence above ``after``."""
    rows = await session.scalars(
        select(KillSwitchCommand)
        .where(
            KillSwitchCommand.tenant_id == tenant_id,
            KillSwitchCommand.agent_id.in_(agent_ids),
            KillSwitchCommand.sequence > after,
            KillSwitchCommand.status != "acknowledged",
            KillSwitchCommand.expires_at > utcnow(),
        )
        .order_by(KillSwitchCommand.agent_id, KillSwitchCommand.sequence)
    )
    return list(rows.all())


async def anchor(
    session: AsyncSession,
    signer: Signer,
    tenant_id: uuid.UUID,
    agent_id: uuid.UUID,
    ancestors: tuple[str, ...] = (),
) -> StreamAnchor:
    """The signed anchor a stream opens with: the highest sequence the agent acknowledged (0 if none) and
    the agent's ``ancestors`` (by which it recognises the lineage fleet commands meant for it)."""
    highest = await session.scalar(
        select(func.max(KillSwitchCommand.sequence)).where(
            KillSwitchCommand.tenant_id == tenant_id,
            KillSwitchCommand.agent_id == agent_id,
            KillSwitchCommand.status == "acknowledged",
        )
    )
    return sign_anchor(
        signer,
        tenant_id=str(tenant_id),
        agent_id=str(agent_id),
        acknowledged=int(highest or 0),
        issued_at=utcnow(),
        ancestors=ancestors,
    )


def fleet_out(row: FleetCommand, delivery: FleetDelivery) -> CommandOut:
    """One agent's view of a fleet command: its delivery and acknowledgement."""
    return CommandOut(
        command_id=row.id,
        tenant_id=row.tenant_id,
        agent_id=delivery.agent_id,
        root_command_id=row.id,
        command=row.command,
        reason=row.reason,
        cascade=True,
        sequence=row.sequence,
        status=delivery.status,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        delivered_at=delivery.delivered_at,
        acknowledged_at=delivery.acknowledged_at,
        ack_outcome=delivery.ack_outcome,
        ack_detail=delivery.ack_detail,
        issued_by=row.issued_by,
        key_id=row.key_id,
        fleet=True,
    )


async def acknowledge(
    session: AsyncSession,
    events: EventLog,
    tenant_id: uuid.UUID,
    agent_id: uuid.UUID,
    command_id: uuid.UUID,
    spec: AckIn,
    *,
    max_depth: int,
) -> CommandOut:
    """Record the agent's acknowledgement of its command, or of a fleet command that covers it (the first
    one stands; repeating it changes nothing)."""
    fleet_row = await fleet.get(session, tenant_id, command_id)
    if fleet_row is not None:
        _check_outcome(fleet_row.command, spec.outcome)
        delivery = await fleet.acknowledge(
            session, events, fleet_row, agent_id, spec.outcome, spec.detail, max_depth=max_depth
        )
        return fleet_out(fleet_row, delivery)
    return to_out(await _acknowledge(session, events, tenant_id, agent_id, command_id, spec))


def _check_outcome(command: str, outcome: str) -> None:
    allowed = ACK_OUTCOMES[command]
    if outcome not in allowed:
        raise OutcomeNotForCommand(
            f"A {command} is acknowledged as one of {', '.join(sorted(allowed))}, not {outcome!r}.",
            allowed=sorted(allowed),
        )


async def _acknowledge(
    session: AsyncSession,
    events: EventLog,
    tenant_id: uuid.UUID,
    agent_id: uuid.UUID,
    command_id: uuid.UUID,
    spec: AckIn,
) -> KillSwitchCommand:
    row = await get(session, tenant_id, command_id)
    if row.agent_id != agent_id:
        # Another agent's command is as invisible as another tenant's.
        raise NotFound(f"No kill-switch command {command_id}.", code="COMMAND_NOT_FOUND")
    _check_outcome(row.command, spec.outcome)
    if row.status == "acknowledged":
        return row
    now = utcnow()
    after_commit(session, partial(metrics.acknowledged, row.issued_at, now))
    row.status = "acknowledged"
    row.acknowledged_at = now
    row.delivered_at = row.delivered_at or now
    row.ack_outcome = spec.outcome
    row.ack_detail = spec.detail
    await session.flush()
    data = {
        "command_id": str(row.id),
        "command": row.command,
        "sequence": row.sequence,
        "outcome": spec.outcome,
        "detail": spec.detail,
    }
    event = NewEvent(
        tenant_id=tenant_id,
        event_type="kill_switch.acknowledged",
        actor_type="agent",
        actor_id=str(agent_id),
        data=data,
        agent_id=str(agent_id),
        outcome="success" if spec.outcome not in ("failed", "rejected") else "failure",
        source="agent",
        request_id=current_request_id(),
    )
    await events.record(event, session)
    return row
