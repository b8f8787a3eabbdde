"""Routes of the audit context: read, prove, export and verify the tenant's tamper-evident event log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from aigos.server.audit import checkpoints, service
from aigos.server.audit.deps import CheckpointSignerDep
from aigos.server.audit.schemas import (
    ActorType,
    AuditEntry,
    AuditKeys,
    AuditVerifyReport,
    InclusionProof,
    SignedCheckpoint,
    Source,
)
from aigos.server.deps import DatabaseDep, SessionDep
from aigos.server.errors import ValidationFailed
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.schemas import Page
from aigos.server.tenancy.deps import require_tenant

router = APIRouter(prefix="/v1/audit", tags=["audit"], route_class=ValidatedRoute)

AuditReader = Annotated[Principal, Depends(require_tenant("audit:read"))]
PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]
EVENT_TYPE = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?$"
NDJSON = "application/x-ndjson"


def _aware(name: str, value: datetime | None) -> datetime | None:
    # A naive time would be silently read as the server's zone by someone; refuse to guess.
    if value is not None and value.tzinfo is None:
        detail = "must include a timezone, e.g. 2027-01-01T00:00:00Z"
        raise ValidationFailed(
            f"query:{name}: {detail}", errors=[{"pointer": f"query:{name}", "detail": detail}]
        )
    return value


async def event_filter(
    actor_type: Annotated[ActorType | None, Query(description="Who caused the events.")] = None,
    actor_id: Annotated[str | None, Query(max_length=255, description="The actor's id.")] = None,
    event_type: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=EVENT_TYPE,
            description="An exact type (`api_key.created`) or a prefix ending in `.*` (`api_key.*`).",
        ),
    ] = None,
    agent_id: Annotated[str | None, Query(max_length=255, description="The agent concerned.")] = None,
    outcome: Annotated[
        str | None, Query(max_length=20, description="`success`, `failure`, `allowed`, `denied`, ...")
    ] = None,
    source: Annotated[
        Source | None, Query(description="Recorded by the server or reported by an agent.")
    ] = None,
    since: Annotated[datetime | None, Query(description="Recorded at or after (ISO 8601 with zone).")] = None,
    until: Annotated[datetime | None, Query(description="Recorded before (ISO 8601 with zone).")] = None,
) -> service.EventFilter:
    """The entries a listing or a follower wants, from the query (its parameters, documented once)."""
    return service.EventFilter(
        actor_type=actor_type,
        actor_id=actor_id,
        event_type=event_type,
        agent_id=agent_id,
        outcome=outcome,
        source=source,
        since=_aware("since", since),
        until=_aware("until", until),
    )


EventFilterDep = Annotated[service.EventFilter, Depends(event_filter)]


@router.get("/events", response_model=Page[AuditEntry], summary="List events")
async def list_events(
    session: SessionDep,
    principal: AuditReader,
    filters: EventFilterDep,
    page: PageNo = 1,
    limit: Limit = 50,
) -> dict[str, Any]:
    """The tenant's log, newest first, each entry exactly as hashed (recompute `hash` to check it)."""
    assert principal.tenant_id is not None
    rows, total = await service.page(session, principal.tenant_id, filters, page=page, limit=limit)
    return {"data": rows, "page": page, "limit": limit, "total": total}


@router.get("/events/{event_id}", response_model=AuditEntry, summary="Get an event")
async def get_event(event_id: uuid.UUID, session: SessionDep, principal: AuditReader) -> dict[str, Any]:
    """One entry of the tenant's log (404 `EVENT_NOT_FOUND`)."""
    assert principal.tenant_id is not None
    return service.exported(await service.get(session, principal.tenant_id, event_id))


@router.get("/events/{event_id}/proof", response_model=InclusionProof, summary="Prove an event")
async def prove_event(
    event_id: uuid.UUID, signer: CheckpointSignerDep, session: SessionDep, principal: AuditReader
) -> dict[str, Any]:
    """An RFC 9162 inclusion proof of the entry in the latest signed checkpoint.

    Seals a new checkpoint first when the latest does not cover the entry yet.
    """
    assert principal.tenant_id is not None
    return await service.proof(session, signer, principal.tenant_id, event_id)


@router.get("/checkpoints/latest", response_model=SignedCheckpoint, summary="Get the latest checkpoint")
async def latest_checkpoint(
    signer: CheckpointSignerDep, session: SessionDep, principal: AuditReader
) -> dict[str, Any]:
    """The newest signed tree head, covering every entry recorded so far (sealed now if needed).

    404 `CHECKPOINT_NOT_FOUND` while the log is empty.
    """
    assert principal.tenant_id is not None
    checkpoint = await service.latest_checkpoint(session, signer, principal.tenant_id)
    return checkpoints.to_json(checkpoint)


@router.get("/keys", response_model=AuditKeys, summary="List checkpoint-signing keys")
async def list_keys(signer: CheckpointSignerDep) -> dict[str, Any]:
    """The public keys that sign checkpoints. Public: pin them to verify exports without trusting the
    export's own header."""
    return {"keys": service.public_keys(signer)}


@router.get(
    "/export",
    response_class=StreamingResponse,
    summary="Export the log",
    responses={
        200: {
            "description": "NDJSON: a header line, then every retained entry in order with each signed "
            "checkpoint right after the entry at its `tree_size`.",
            "content": {NDJSON: {"schema": {"type": "string"}}},
        }
    },
)
async def export_log(
    database: DatabaseDep, signer: CheckpointSignerDep, principal: AuditReader
) -> StreamingResponse:
    """The tenant's whole retained log for offline verification with `aigos audit verify`.

    Seals the head first, so every exported entry is covered by a signed checkpoint. Streamed: the
    export never sits in memory on the server.
    """
    assert principal.tenant_id is not None
    plan = await service.plan_export(database, signer, principal.tenant_id)
    return StreamingResponse(
        service.export_stream(database, signer, plan),
        media_type=NDJSON,
        headers={"Content-Disposition": f'attachment; filename="aigos-audit-{principal.tenant_id}.ndjson"'},
    )


@router.post("/verify", response_model=AuditVerifyReport, summary="Verify the log")
async def verify_log(
    database: DatabaseDep, signer: CheckpointSignerDep, principal: AuditReader
) -> dict[str, Any]:
    """Verify the tenant's export on the server, trusting only the server's own signing key.

    Takes no body: the tenant's retained log is read as `GET /v1/audit/export` would write it, a page at a
    time, and checked line by line, so any length verifies in the same memory.

    `ok` is false and `failure` names the first bad line and entry when the stored log was altered.
    Verifying a downloaded export yourself, with pinned keys, trusts the server less.
    """
    assert principal.tenant_id is not None
    report = await service.verify(database, signer, principal.tenant_id)
    return report.to_json()
