"""``POST /v1/telemetry``: agents report events (tool outcomes, LLM calls, ...) into the event log."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, status

from aigos.server.audit.events import NewEvent, current_request_id
from aigos.server.deps import RuntimeDep
from aigos.server.errors import BadRequest, ServiceUnavailable, ValidationFailed
from aigos.server.identity.agent_auth import AgentPrincipal
from aigos.server.telemetry.reporter import ReporterDep
from aigos.server.telemetry.schemas import TelemetryAccepted, TelemetryBatch, TelemetryEvent

router = APIRouter(prefix="/v1/telemetry", tags=["telemetry"])

#: Event types the server's own contexts record: an agent reporting one could forge the audit trail.
RESERVED_PREFIXES = (
    "policy.",
    "killswitch.",
    "agent.",
    "tenant.",
    "api_key.",
    "credential.",
    "audit.",
    "budget.",
    "member.",
    "user.",
    "platform.",
    "telemetry.",
)


def _reserved(event_type: str) -> bool:
    return event_type.lower().startswith(RESERVED_PREFIXES)


@router.post(
    "",
    response_model=TelemetryAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Report events (agent token)",
)
async def report(batch: TelemetryBatch, runtime: RuntimeDep, agent: ReporterDep) -> TelemetryAccepted:
    """Queue 1..500 agent-reported events for the event log (`source` `agent`); written in batches.

    Types owned by a server context (`policy.`, `killswitch.`, `agent.`, ...) are refused with 400
    `RESERVED_EVENT_TYPE`: report `tool.*`, `llm.*`, `agent_reported.*` or `custom.*` instead.
    A terminated agent may still report with its unexpired token (its last calls' outcomes).
    """
    reserved = sorted({e.event_type for e in batch.events if _reserved(e.event_type)})
    if reserved:
        raise BadRequest(
            f"Event types owned by the server cannot be reported: {', '.join(reserved)}.",
            code="RESERVED_EVENT_TYPE",
        )
    request_id = current_request_id()
    events = [_event(agent, item, index, request_id) for index, item in enumerate(batch.events)]
    accepted = 0
    for event in events:
        if runtime.events.enqueue(event):
            accepted += 1
    if accepted == 0:
        # Nothing fitted: the writer is behind. Tell the SDK to retry instead of losing the batch silently.
        raise ServiceUnavailable(
            "The event log is busy; retry shortly.", code="TELEMETRY_BACKLOG", headers={"Retry-After": "1"}
        )
    return TelemetryAccepted(accepted=accepted)


def _event(agent: AgentPrincipal, item: TelemetryEvent, index: int, request_id: str | None) -> NewEvent:
    """The event log's form of one reported event; 400 pointing at it if its data is not JSON."""
    agent_id = str(agent.agent_id)
    try:
        return NewEvent(
            tenant_id=agent.tenant_id,
            event_type=item.event_type,
            actor_type="agent",
            actor_id=agent_id,
            data=item.data,
            agent_id=agent_id,
            outcome=None,
            source="agent",
            occurred_at=_utc(item.timestamp),
            request_id=request_id,
            trace_id=item.trace_id,
            span_id=item.span_id,
            **({"event_id": item.event_id} if item.event_id else {}),
        )
    except ValueError as exc:
        # NaN parses (Python's JSON reader takes it) but is no JSON the log could store.
        pointer = f"/events/{index}/data"
        raise ValidationFailed(
            f"{pointer}: {exc}", errors=[{"pointer": pointer, "detail": str(exc)}]
        ) from exc


def _utc(value: datetime | None) -> datetime | None:
    # Agents on hosts without zone info send naive times: read them as UTC rather than refuse the batch.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
