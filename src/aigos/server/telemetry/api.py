"""``POST /v1/telemetry``: agents report events (tool outcomes, LLM calls, ...) into the event log."""

from __future__ import annotations

from fastapi import APIRouter, status

from aigos.server.deps import EventsDep
from aigos.server.errors import ServiceUnavailable
from aigos.server.routing import ValidatedRoute
from aigos.server.telemetry.deps import ReporterDep
from aigos.server.telemetry.schemas import TelemetryAccepted, TelemetryBatch
from aigos.server.telemetry.service import reported_events

router = APIRouter(prefix="/v1/telemetry", tags=["telemetry"], route_class=ValidatedRoute)


@router.post(
    "",
    response_model=TelemetryAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Report events (agent token)",
)
async def report(batch: TelemetryBatch, events: EventsDep, agent: ReporterDep) -> TelemetryAccepted:
    """Queue 1..500 agent-reported events for the event log (`source` `agent`); written in batches.

    Types owned by a server context (`policy.`, `kill_switch.`, `agent.`, ...) are refused with 400
    `RESERVED_EVENT_TYPE`: report `tool.*`, `llm.*`, `agent_reported.*` or `custom.*` instead.
    A terminated agent may still report with its unexpired token (its last calls' outcomes).
    """
    reported = reported_events(agent, batch.events, "/events")
    # 503 STORAGE_UNAVAILABLE if the event log's journal cannot be written: nothing is kept then.
    accepted = events.enqueue_many(reported)
    if accepted == 0:
        # Nothing fitted: the writer is behind. Tell the SDK to retry instead of losing the batch silently.
        raise ServiceUnavailable(
            "The event log is busy; retry shortly.", code="TELEMETRY_BACKLOG", headers={"Retry-After": "1"}
        )
    return TelemetryAccepted(accepted=accepted)
