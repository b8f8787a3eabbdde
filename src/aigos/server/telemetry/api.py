"""The telemetry context's routes: agents report events (tool outcomes, LLM calls, ...) into the event log
(``POST /v1/telemetry``); people read that same log back, listed or followed live (``/events``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import StreamingResponse

from aigos.server.audit import service as audit
from aigos.server.audit.api import AuditReader, EventFilterDep, Limit, PageNo
from aigos.server.audit.schemas import AuditEntry
from aigos.server.deps import DatabaseDep, EventsDep, RuntimeDep, SessionDep
from aigos.server.errors import ServiceUnavailable
from aigos.server.routing import ItemizedRoute, ValidatedRoute
from aigos.server.schemas import Page
from aigos.server.telemetry.deps import ReporterDep
from aigos.server.telemetry.follow import Follower
from aigos.server.telemetry.schemas import RefusedEvent, TelemetryAccepted, TelemetryBatch
from aigos.server.telemetry.service import Refusal, refused_batch, sort_reported

router = APIRouter(prefix="/v1/telemetry", tags=["telemetry"], route_class=ValidatedRoute)


async def report(batch: TelemetryBatch, events: EventsDep, agent: ReporterDep) -> TelemetryAccepted:
    """Queue 1..500 agent-reported events for the event log (`source` `agent`); written in batches.

    Each event is judged on its own: the good ones are queued, and `refused` names each other one by its
    index, a JSON pointer and a code. Types owned by a server context (`policy.`, `kill_switch.`,
    `agent.`, ...) are `RESERVED_EVENT_TYPE`: report `tool.*`, `llm.*`, `agent_reported.*` or `custom.*`.
    If no event can be recorded the answer is 400, one `errors` entry per event. Events the event log has
    no room for now are refused as `TELEMETRY_BACKLOG` (send them again); if none fitted, 503.
    A terminated agent may still report with its unexpired token (its last calls' outcomes).
    """
    reported, refusals = sort_reported(agent, batch.events, "events")
    if not reported:
        raise refused_batch(refusals)
    # 503 STORAGE_UNAVAILABLE if the event log's journal cannot be written: nothing is kept then.
    accepted = events.enqueue_many(reported)
    if accepted == 0:
        # Nothing fitted: the writer is behind. Tell the SDK to retry instead of losing the batch silently.
        raise ServiceUnavailable(
            "The event log is busy; retry shortly.", code="TELEMETRY_BACKLOG", headers={"Retry-After": "1"}
        )
    refused = [RefusedEvent(index=r.index, pointer=r.pointer, code=r.code, detail=r.detail) for r in refusals]
    if accepted < len(reported):
        # The rest were not queued: the agent still has them and sends them again.
        good = _indexes(len(batch.events), refusals)
        refused += [_backlogged(index) for index in good[accepted:]]
        refused.sort(key=lambda event: event.index)
    return TelemetryAccepted(accepted=accepted, refused=refused)


def _indexes(count: int, refusals: list[Refusal]) -> list[int]:
    """The indexes of a batch's events that were not refused."""
    skipped = {refusal.index for refusal in refusals}
    return [index for index in range(count) if index not in skipped]


def _backlogged(index: int) -> RefusedEvent:
    return RefusedEvent(
        index=index,
        pointer=f"/events/{index}",
        code="TELEMETRY_BACKLOG",
        detail="the event log has no room for it now: send it again shortly",
    )


router.add_api_route(
    "",
    report,
    methods=["POST"],
    response_model=TelemetryAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Report events (agent token)",
    route_class_override=ItemizedRoute,
)


@router.get("/events", response_model=Page[AuditEntry], summary="List events")
async def list_events(
    session: SessionDep, principal: AuditReader, filters: EventFilterDep, page: PageNo = 1, limit: Limit = 50
) -> dict[str, Any]:
    """The tenant's event log, newest first: governance events (`policy.checked`, `kill_switch.triggered`,
    ...) and what its agents reported (`source=agent`), filtered by type (exact, or a prefix ending in
    `.*`), agent, outcome and time. The same log as `GET /v1/audit/events`, each entry as hashed."""
    assert principal.tenant_id is not None
    rows, total = await audit.page(session, principal.tenant_id, filters, page=page, limit=limit)
    return {"data": rows, "page": page, "limit": limit, "total": total}


@router.get(
    "/events/stream",
    response_class=StreamingResponse,
    summary="Follow events live (Server-Sent Events)",
    responses={
        200: {
            "description": "One frame per entry: `id` its `seq`, `event` its type, `data` the entry as "
            "`GET /v1/telemetry/events` shows it; `: keep-alive` comments in between.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        429: {"description": "Too many streams for the tenant on this server (`TOO_MANY_STREAMS`)"},
    },
)
async def follow_events(
    database: DatabaseDep,
    runtime: RuntimeDep,
    principal: AuditReader,
    filters: EventFilterDep,
    after: Annotated[
        int | None,
        Query(
            ge=0, le=2**62, description="Start after this `seq` (default: only what is appended from now)."
        ),
    ] = None,
    last_event_id: Annotated[
        int | None,
        Header(ge=0, le=2**62, description="Resume after this `seq` (sent by a reconnecting EventSource)."),
    ] = None,
) -> StreamingResponse:
    """The tenant's log as it grows, filtered as the list is, within about a second of each entry.
    Reconnect with `Last-Event-ID` (or `after`) to continue where the stream stopped: nothing is skipped.
    The stream ends when the server stops; reconnect, to another replica if there is one."""
    assert principal.tenant_id is not None
    follower = Follower(
        database,
        runtime.shutdown,
        principal.tenant_id,
        filters,
        last_event_id if last_event_id is not None else after,
    )
    await follower.start()
    return StreamingResponse(
        follower.frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
