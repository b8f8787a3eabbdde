"""Agent-reported events, as the event log records them: from ``POST /v1/telemetry`` and from the
outcomes an agent sends along with its next policy check."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from aigos.core.reported import reserved
from aigos.server.audit.events import NewEvent, current_request_id
from aigos.server.errors import BadRequest, ValidationFailed
from aigos.server.identity.agent_auth import AgentPrincipal
from aigos.server.telemetry.schemas import TelemetryEvent

#: How far ahead of the server's clock an agent's ``timestamp`` may be: hosts' clocks drift, but an event
#: dated next week would sort the log's timeline wrong for everyone reading it.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def reported_events(agent: AgentPrincipal, items: Sequence[TelemetryEvent], pointer: str) -> list[NewEvent]:
    """The event log's form of ``items`` (at JSON pointer ``pointer`` of the request body).

    400 ``RESERVED_EVENT_TYPE`` if one claims a type the server owns; 400 with the item's pointer if its
    data is no JSON the log could store or its ``timestamp`` lies more than ``MAX_CLOCK_SKEW`` ahead. A
    batch is taken whole or not at all: nothing of a refused batch is written.
    """
    owned = sorted({item.event_type for item in items if reserved(item.event_type)})
    if owned:
        raise BadRequest(
            f"Event types owned by the server cannot be reported: {', '.join(owned)}.",
            code="RESERVED_EVENT_TYPE",
        )
    request_id = current_request_id()
    latest = datetime.now(UTC) + MAX_CLOCK_SKEW
    for index, item in enumerate(items):
        when = _utc(item.timestamp)
        if when is not None and when > latest:
            at = f"{pointer}/{index}/timestamp"
            detail = f"is {when.isoformat()}, more than {MAX_CLOCK_SKEW} ahead of the server's clock"
            raise ValidationFailed(f"{at}: {detail}", errors=[{"pointer": at, "detail": detail}])
    return [_event(agent, item, f"{pointer}/{index}/data", request_id) for index, item in enumerate(items)]


def _event(agent: AgentPrincipal, item: TelemetryEvent, pointer: str, request_id: str | None) -> NewEvent:
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
        raise ValidationFailed(
            f"{pointer}: {exc}", errors=[{"pointer": pointer, "detail": str(exc)}]
        ) from exc


def _utc(value: datetime | None) -> datetime | None:
    # Agents on hosts without zone info send naive times: read them as UTC rather than refuse the batch.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
