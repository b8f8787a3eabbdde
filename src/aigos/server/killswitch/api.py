"""Kill-switch routes: trigger and read commands (admin plane), stream and acknowledge (agent plane)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, status
from fastapi.responses import StreamingResponse

from aigos.core.agents import AgentStatus
from aigos.core.signing import b64url
from aigos.server.db.commit_hooks import run_after_commit
from aigos.server.db.database import set_tenant
from aigos.server.deps import DatabaseDep, EventsDep, SessionDep, SettingsDep
from aigos.server.errors import BadRequest, NotFound, ServiceUnavailable
from aigos.server.identity.agent_auth import token_error
from aigos.server.identity.deps import IdentityStateDep
from aigos.server.killswitch import fleet, service, triggers
from aigos.server.killswitch.connection import FleetOutgoing, Outgoing
from aigos.server.killswitch.deps import HubDep
from aigos.server.killswitch.listener import ListenerDep
from aigos.server.killswitch.models import FleetCommand as FleetRow
from aigos.server.killswitch.schemas import (
    AckIn,
    CommandName,
    CommandOut,
    CommandPage,
    CommandRef,
    CommandStatus,
    FleetCommandOut,
    FleetCommandPage,
    FleetScope,
    PublicKey,
    PublicKeys,
    Skipped,
    TriggerIn,
    TriggerOut,
)
from aigos.server.killswitch.stream import StreamResponse
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.tenancy.deps import require_tenant

router = APIRouter(prefix="/v1/kill-switch", tags=["kill-switch"], route_class=ValidatedRoute)

Trigger = Annotated[Principal, Depends(require_tenant("killswitch:trigger"))]
Reader = Annotated[Principal, Depends(require_tenant("agents:read"))]
PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: Sequences are BIGINT: a larger ``Last-Event-ID`` was never sent by this server.
MAX_SEQUENCE = 2**63 - 1


def _tenant(principal: Principal) -> uuid.UUID:
    assert principal.tenant_id is not None
    return principal.tenant_id


@router.post(
    "/trigger",
    response_model=TriggerOut,
    status_code=status.HTTP_201_CREATED,
    summary="Trigger the kill switch",
)
async def trigger(
    spec: TriggerIn,
    hub: HubDep,
    events: EventsDep,
    identity: IdentityStateDep,
    settings: SettingsDep,
    session: SessionDep,
    principal: Trigger,
) -> TriggerOut:
    """TERMINATE, PAUSE or RESUME one agent (with its descendants unless `cascade` is false) or every agent.

    A single agent (or one without descendants) gets its own signed command and its status changes at
    once on every replica (terminated agents' tokens are refused; paused agents' policy checks answer
    `PAUSED`). Every agent of the tenant (`all_agents`), or an agent with descendants (`cascade`), gets
    one fleet command for the whole scope (`fleet: true`): once committed, every replica's policy checks
    deny the scope's agents (`PAUSED` / `TERMINATED`) and their streams receive it; the agents' statuses
    and per-agent records follow in the background. A fleet halt wins until a fleet RESUME of the same
    scope or of the tenant lifts it: a narrower RESUME meanwhile is refused (409 `FLEET_HALT_ACTIVE`).
    Commands reach the agents' streams, on any replica, as soon as the trigger is committed; with
    PostgreSQL this holds while Redis is down too.
    """
    result = await triggers.trigger(
        session, hub, principal, spec, events=events, identity=identity, settings=settings
    )
    if isinstance(result, fleet.Issued):
        row = result.row
        return TriggerOut(
            command_id=row.id,
            status="pending",
            issued_at=row.issued_at,
            commands=[],
            fleet=True,
            scope=FleetScope(
                kind="tenant" if row.root_agent_id is None else "lineage", root_agent_id=row.root_agent_id
            ),
            sequence=row.sequence,
        )
    refs = [CommandRef(command_id=row.id, agent_id=row.agent_id, status="pending") for row in result.rows]
    return TriggerOut(
        command_id=refs[0].command_id if refs else uuid.uuid4(),
        status="pending",
        issued_at=result.issued_at,
        commands=refs,
        skipped=[Skipped(agent_id=agent_id, reason=why) for agent_id, why in result.skipped],
    )


@router.get("/commands", response_model=CommandPage, summary="List kill-switch commands")
async def list_commands(
    session: SessionDep,
    principal: Reader,
    page: PageNo = 1,
    limit: Limit = 20,
    agent_id: uuid.UUID | None = None,
    command: CommandName | None = None,
    status_: Annotated[CommandStatus | None, Query(alias="status")] = None,
    root_command_id: uuid.UUID | None = None,
) -> CommandPage:
    """The tenant's commands, newest first, with issued, delivered and acknowledged times."""
    rows, total = await service.page(
        session,
        _tenant(principal),
        page=page,
        limit=limit,
        agent_id=agent_id,
        command=command,
        status=status_,
        root_command_id=root_command_id,
    )
    return CommandPage(commands=[service.to_out(row) for row in rows], total=total, page=page, limit=limit)


@router.get("/fleet-commands", response_model=FleetCommandPage, summary="List fleet commands")
async def list_fleet_commands(
    session: SessionDep, principal: Reader, page: PageNo = 1, limit: Limit = 20
) -> FleetCommandPage:
    """The tenant's fleet commands, newest first, with their per-agent delivery and acknowledgement counts."""
    rows, total = await fleet.page(session, _tenant(principal), page=page, limit=limit)
    counts = await fleet.counts(session, [row.id for row in rows])
    return FleetCommandPage(
        commands=[_fleet_out(row, counts[row.id]) for row in rows], total=total, page=page, limit=limit
    )


@router.get("/fleet-commands/{command_id}", response_model=FleetCommandOut, summary="Get a fleet command")
async def get_fleet_command(command_id: uuid.UUID, session: SessionDep, principal: Reader) -> FleetCommandOut:
    """One fleet command of the tenant; 404 `COMMAND_NOT_FOUND` otherwise."""
    row = await fleet.get(session, _tenant(principal), command_id)
    if row is None:
        raise NotFound(f"No fleet command {command_id}.", code="COMMAND_NOT_FOUND")
    return _fleet_out(row, (await fleet.counts(session, [row.id]))[row.id])


def _fleet_out(row: FleetRow, counts: dict[str, int]) -> FleetCommandOut:
    return FleetCommandOut(
        command_id=row.id,
        tenant_id=row.tenant_id,
        scope=FleetScope(
            kind="tenant" if row.root_agent_id is None else "lineage", root_agent_id=row.root_agent_id
        ),
        command=row.command,
        reason=row.reason,
        sequence=row.sequence,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        issued_by=row.issued_by,
        key_id=row.key_id,
        active=row.active,
        lifted_by=row.lifted_by,
        bookkeeping_done_at=row.bookkeeping_done_at,
        targeted=row.targeted,
        skipped=row.skipped,
        pending=counts["pending"],
        delivered=counts["delivered"],
        acknowledged=counts["acknowledged"],
    )


@router.get("/commands/{command_id}", response_model=CommandOut, summary="Get a kill-switch command")
async def get_command(command_id: uuid.UUID, session: SessionDep, principal: Reader) -> CommandOut:
    """One command of the tenant; 404 `COMMAND_NOT_FOUND` otherwise."""
    return service.to_out(await service.get(session, _tenant(principal), command_id))


@router.post(
    "/commands/{command_id}/ack", response_model=CommandOut, summary="Acknowledge a command (agent token)"
)
async def acknowledge(
    command_id: uuid.UUID,
    spec: AckIn,
    database: DatabaseDep,
    events: EventsDep,
    settings: SettingsDep,
    agent: ListenerDep,
) -> CommandOut:
    """The agent reports what it did with its command, or with a fleet command that covers it (`fleet`
    true in the answer: its own delivery of it); terminated agents may still acknowledge."""
    async with database.session() as session:
        await set_tenant(session, agent.tenant_id)
        out = await service.acknowledge(
            session,
            events,
            agent.tenant_id,
            agent.agent_id,
            command_id,
            spec,
            max_depth=settings.max_lineage_depth,
        )
    await run_after_commit(session)
    return out


@router.get(
    "/stream",
    response_class=StreamingResponse,
    summary="Stream kill-switch commands (agent token, Server-Sent Events)",
    responses={
        200: {
            "description": "`event: kill-switch` frames whose `data` is a signed command, "
            "`event: kill-switch-fleet` frames whose `data` is a signed fleet command; `: keep-alive` "
            "comments in between.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def stream(
    hub: HubDep,
    database: DatabaseDep,
    agent: ListenerDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=20, description="Resume after this sequence."),
    ] = None,
) -> StreamingResponse:
    """The agent's commands as they are issued; first those it has not acknowledged (after `Last-Event-ID`).

    The stream opens with `event: opened` whose `data` is a signed anchor: `acknowledged`, the highest
    sequence the agent has acknowledged. A client refuses any command at or below it, even after a restart.
    The anchor also lists the agent's `ancestors` (parent first, left out for a root agent): a fleet
    command for a lineage is the agent's when its root is the agent or one of them. The fleet halts in
    force over the agent are sent after its own pending commands, with the latest fleet RESUMEs covering
    it, in fleet sequence order.

    An agent holds at most `AIGOS_KILLSWITCH_MAX_STREAMS_PER_AGENT` streams per server process: a newer
    stream ends the oldest. A terminated agent receives its pending TERMINATE, then the stream closes; once
    nothing is pending it is refused (401 `AGENT_TERMINATED`), so an EventSource stops reconnecting.
    A `Last-Event-ID` that is not a sequence this server could have sent is refused (400
    `INVALID_LAST_EVENT_ID`) rather than ignored: an EventSource only ever echoes an id it received, so
    anything else is a client bug that replaying every pending command would hide.
    """
    after = _resume_after(last_event_id)
    if hub.closing:
        raise ServiceUnavailable(
            "The server is shutting down.", code="SHUTTING_DOWN", headers={"Retry-After": "1"}
        )
    halts = hub.fleet.halts if hub.fleet is not None else None
    # Registered before the backlog is read: a command committed in between arrives live (sent once).
    connection = hub.connect(agent.agent_id, agent.tenant_id, after)
    try:
        async with database.session() as session:
            await set_tenant(session, agent.tenant_id)
            # A root agent's token says it has no parent: nothing to read.
            rooted = "aigos:lineage" not in agent.claims
            ancestors = (
                () if rooted or not halts else await halts.ancestors(agent.tenant_id, agent.agent_id, session)
            )
            # A lineage command dispatched before this is in the halts read below: none is missed.
            hub.set_ancestors(agent.agent_id, ancestors)
            rows = await service.pending(session, agent.tenant_id, [agent.agent_id], after)
            anchor = await service.anchor(session, hub.signer, agent.tenant_id, agent.agent_id, ancestors)
            backlog: list[Outgoing | FleetOutgoing] = [Outgoing.of(service.signed(row)) for row in rows]
        if halts is not None:
            # The fleet halts over the agent and the latest RESUMEs, for an agent that connects late.
            backlog += [
                FleetOutgoing.of(c) for c in halts.for_agent(agent.tenant_id, agent.agent_id, ancestors)
            ]
        terminated = agent.status is AgentStatus.TERMINATED
        if terminated and not backlog:
            # Nothing more will ever come: a 200 that closes at once would be reconnected to forever.
            raise token_error(
                "The agent is terminated and has no command left to receive.", "AGENT_TERMINATED"
            )
    except BaseException:
        hub.disconnect(connection)
        raise
    return StreamResponse(hub, connection, anchor, backlog, end_after_backlog=terminated, headers=SSE_HEADERS)


def _resume_after(last_event_id: str | None) -> int:
    """The sequence named by ``Last-Event-ID`` (0 when absent); 400 unless it is one we could have sent."""
    value = (last_event_id or "").strip()
    if not value:
        return 0
    if not value.isascii() or not value.isdigit():
        raise BadRequest("Last-Event-ID must be a sequence number.", code="INVALID_LAST_EVENT_ID")
    after = int(value)
    if after > MAX_SEQUENCE:
        raise BadRequest(f"Last-Event-ID must be at most {MAX_SEQUENCE}.", code="INVALID_LAST_EVENT_ID")
    return after


@router.get("/keys", response_model=PublicKeys, summary="Kill-switch public keys")
async def keys(hub: HubDep) -> PublicKeys:
    """The Ed25519 keys that sign commands; an agent verifies every command against them before obeying."""
    signer = hub.signer
    return PublicKeys(keys=[PublicKey(key_id=signer.key_id, public_key=b64url(signer.public_key))])
