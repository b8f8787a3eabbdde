"""Agent-reported events, as the event log records them: from ``POST /v1/telemetry`` and from the
outcomes an agent sends along with its next policy check.

Each event is judged on its own. ``POST /v1/telemetry`` keeps the good events of a batch and answers a
refusal, with a JSON pointer and a stable code, for each bad one (``sort_reported``); a policy check is
refused whole if any event it carries is bad (``reported_events``), since its answer has no room for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from aigos.core.reported import reserved
from aigos.core.storable import MAX_DEPTH, find_unstorable
from aigos.server.audit.events import NewEvent, current_request_id
from aigos.server.errors import BadRequest
from aigos.server.identity.agent_auth import AgentPrincipal
from aigos.server.problems import json_pointer
from aigos.server.telemetry.schemas import TelemetryEvent

#: How far ahead of the server's clock an agent's ``timestamp`` may be: hosts' clocks drift, but an event
#: dated next week would sort the log's timeline wrong for everyone reading it.
MAX_CLOCK_SKEW = timedelta(minutes=5)

#: An event's type is one the server owns (``policy.``, ``kill_switch.``, ``agent.``, ...).
RESERVED_EVENT_TYPE = "RESERVED_EVENT_TYPE"
#: An event breaks the schema, or holds text or numbers the log cannot store alike on both backends.
INVALID_EVENT = "VALIDATION_FAILED"
#: An event's ``timestamp`` lies more than ``MAX_CLOCK_SKEW`` ahead of the server's clock.
CLOCK_SKEW = "CLOCK_SKEW"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the event at ``index`` of a batch was not recorded, and where in the body (``pointer``)."""

    index: int
    pointer: str
    code: str
    detail: str


class _Refused(Exception):
    def __init__(self, loc: tuple[str | int, ...], code: str, detail: str) -> None:
        super().__init__(detail)
        self.loc, self.code, self.detail = loc, code, detail


def sort_reported(
    agent: AgentPrincipal, items: Sequence[Any], field: str
) -> tuple[list[NewEvent], list[Refusal]]:
    """The events of ``items`` (the raw JSON array at ``field`` of the body) the log can record, and a
    refusal for each of the others, in the batch's order."""
    return _sorted(agent, items, field, _parsed)


def reported_events(agent: AgentPrincipal, items: Sequence[TelemetryEvent], field: str) -> list[NewEvent]:
    """The log's form of ``items`` (parsed, at ``field`` of the body), all of them or none: 400
    (``refused_batch``) if any is refused."""
    events, refusals = _sorted(agent, items, field, lambda item: item)
    if refusals:
        raise refused_batch(refusals)
    return events


def refused_batch(refusals: Sequence[Refusal]) -> BadRequest:
    """The 400 for a batch whose refused events keep it from being recorded: one ``errors`` entry per
    event, the problem's ``code`` theirs when they share one (``RESERVED_EVENT_TYPE``, ``CLOCK_SKEW``),
    else ``VALIDATION_FAILED``."""
    codes = {refusal.code for refusal in refusals}
    first = refusals[0]
    more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
    return BadRequest(
        f"{first.pointer}: {first.detail}{more}",
        code=codes.pop() if len(codes) == 1 else INVALID_EVENT,
        errors=[{"pointer": r.pointer, "detail": r.detail, "code": r.code} for r in refusals],
    )


def _sorted(
    agent: AgentPrincipal, items: Sequence[Any], field: str, parse: Callable[[Any], TelemetryEvent]
) -> tuple[list[NewEvent], list[Refusal]]:
    request_id = current_request_id()
    latest = datetime.now(UTC) + MAX_CLOCK_SKEW
    events: list[NewEvent] = []
    refusals: list[Refusal] = []
    for index, item in enumerate(items):
        try:
            events.append(_event(agent, parse(item), request_id, latest))
        except _Refused as refused:
            pointer = json_pointer(("body", field, index, *refused.loc))
            refusals.append(Refusal(index, pointer, refused.code, refused.detail))
    return events, refusals


def _parsed(raw: Any) -> TelemetryEvent:
    # Two levels below the body's root (the array, then the event): the edge's depth limit holds here too.
    found = find_unstorable(raw, MAX_DEPTH - 2)
    if found is not None:
        raise _Refused(found.path, INVALID_EVENT, found.reason)
    try:
        return TelemetryEvent.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise _Refused(tuple(first["loc"]), INVALID_EVENT, first["msg"]) from None


def _event(agent: AgentPrincipal, item: TelemetryEvent, request_id: str | None, latest: datetime) -> NewEvent:
    if reserved(item.event_type):
        detail = f"{item.event_type} is the server's: report tool.*, llm.*, agent_reported.* or custom.*"
        raise _Refused(("event_type",), RESERVED_EVENT_TYPE, detail)
    when = _utc(item.timestamp)
    if when is not None and when > latest:
        detail = f"is {when.isoformat()}, more than {MAX_CLOCK_SKEW} ahead of the server's clock"
        raise _Refused(("timestamp",), CLOCK_SKEW, detail)
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
            occurred_at=when,
            request_id=request_id,
            trace_id=item.trace_id,
            span_id=item.span_id,
            **({"event_id": item.event_id} if item.event_id else {}),
        )
    except ValueError as exc:
        # NaN reaches here from a caller that built the model itself; the log could not store it.
        raise _Refused(("data",), INVALID_EVENT, str(exc)) from exc


def _utc(value: datetime | None) -> datetime | None:
    # Agents on hosts without zone info send naive times: read them as UTC rather than refuse the event.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
