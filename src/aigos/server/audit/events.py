"""What a context hands the event log: one governance event, before it has a place in the chain."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog

from aigos.core.canonical import canonical
from aigos.server import tracing
from aigos.server.principal import Principal

Source = Literal["server", "agent"]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A GovernanceEvent (seed 000) plus actor, source, outcome and request id.

    ``event_type`` is dotted, context first: ``tenant.created``, ``api_key.rotated``, ``policy.checked``.
    ``actor_type`` says who caused it: ``api_key``, ``platform``, ``user``, ``agent`` or ``system``.
    """

    tenant_id: uuid.UUID
    event_type: str
    actor_type: str
    actor_id: str | None
    data: Mapping[str, Any] = field(default_factory=dict)
    agent_id: str | None = None
    outcome: str | None = "success"
    source: Source = "server"
    occurred_at: datetime | None = None
    request_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    #: ``data`` as canonical JSON, made once here: what the log stores, and proof that ``data`` is JSON.
    data_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Refused here, at the caller: an event that could never be written (a set, NaN) must not reach
        # the buffered writer, where it would hold back every later event of its tenant.
        try:
            text = canonical(dict(self.data)).decode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"event data is not JSON: {exc}") from exc
        object.__setattr__(self, "data_text", text)
        if self.trace_id is None and self.span_id is None and (trace := tracing.current.get()) is not None:
            # Recorded while handling a request that named its trace: the event joins it.
            object.__setattr__(self, "trace_id", trace[0])
            object.__setattr__(self, "span_id", trace[1])
        if self.occurred_at is not None and self.occurred_at.utcoffset() is None:
            raise ValueError("occurred_at must carry its time zone")


def current_request_id() -> str | None:
    """The id of the request being handled, if any (bound by the request-context middleware)."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value is not None else None


def by(
    principal: Principal,
    event_type: str,
    data: Mapping[str, Any] | None = None,
    *,
    tenant_id: uuid.UUID | None = None,
    outcome: str | None = "success",
    agent_id: str | None = None,
) -> NewEvent:
    """An event caused by ``principal`` during the current request, in its tenant (or ``tenant_id``)."""
    tenant = tenant_id or principal.tenant_id
    if tenant is None:
        raise ValueError("an event needs a tenant")
    actor_id = principal.actor_id.split(":", 1)[-1] if ":" in principal.actor_id else principal.actor_id
    return NewEvent(
        tenant_id=tenant,
        event_type=event_type,
        actor_type=principal.kind,
        actor_id=actor_id,
        data=dict(data or {}),
        agent_id=agent_id,
        outcome=outcome,
        request_id=current_request_id(),
    )
