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
    """1 to 500 events in one request."""

    events: list[TelemetryEvent] = Field(min_length=1, max_length=MAX_EVENTS)


class TelemetryAccepted(BaseModel):
    """How many events were queued for the event log."""

    accepted: int
