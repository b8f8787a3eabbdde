"""The trace a request belongs to, from its W3C ``traceparent``: carried into the events it records and
its log lines, so an agent's trace and the governance decisions taken in it can be joined."""

from __future__ import annotations

from contextvars import ContextVar

#: ``(trace_id, span_id)`` of the request being handled, when the caller sent a valid ``traceparent``
#: (``span_id`` is the caller's span: the parent of anything done for the request).
current: ContextVar[tuple[str, str] | None] = ContextVar("aigos_trace", default=None)
