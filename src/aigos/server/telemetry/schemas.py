"""API shapes of ``POST /v1/telemetry``: a batch of agent-reported events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from aigos.core.reported import EVENT_TYPE
from aigos.server.inputs import Input

MAX_EVENTS = 500


class TelemetryEvent(Input):
    """One event as an agent reports it."""

    event_type: str = Field(
        min_length=3,
        max_length=100,
        pattern=EVENT_TYPE,
        description="Dotted, context first: `tool.completed`, `llm.call`, `custom.step`.",
    )
    timestamp: datetime | None = Field(
        default=None, description="When it happened (ISO 8601; no zone means UTC). Default: on receipt."
    )
    data: dict[str, Any] = Field(default_factory=dict, description="Free-form details.")
    trace_id: str | None = Field(default=None, max_length=64)
    span_id: str | None = Field(default=None, max_length=32)
    event_id: uuid.UUID | None = Field(default=None, description="The agent's id for it.")


class TelemetryBatch(Input):
    """1 to 500 events in one request, each judged on its own."""

    # Items stay raw here so one bad event is refused alone (``service.sort_reported``), not the batch.
    events: list[Any] = Field(
        min_length=1,
        max_length=MAX_EVENTS,
        json_schema_extra={"items": {"$ref": "#/components/schemas/TelemetryEvent"}},
    )


class RefusedEvent(BaseModel):
    """An event of the batch that was not recorded, and why."""

    index: int = Field(description="Its position in `events`, from 0.")
    pointer: str = Field(description="JSON pointer (RFC 6901) into the request body: what was refused.")
    code: str = Field(
        description="`VALIDATION_FAILED` (breaks the schema or holds what cannot be stored), "
        "`RESERVED_EVENT_TYPE`, `CLOCK_SKEW` (dated too far ahead): fix it, do not resend it as is. "
        "`TELEMETRY_BACKLOG`: the event log is behind; send it again shortly."
    )
    detail: str


class TelemetryAccepted(BaseModel):
    """How many events were queued for the event log, and each one that was not."""

    accepted: int = Field(description="Events queued for the event log: all of `events` but `refused`.")
    refused: list[RefusedEvent] = Field(default_factory=list)
