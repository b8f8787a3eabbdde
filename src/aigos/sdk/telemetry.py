"""Telemetry batching: events are appended to a bounded buffer (cheap, never blocks a guarded call) and
flushed to ``POST /v1/telemetry`` in batches of at most 500, every few seconds, when enough are waiting,
and at close."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import orjson

from aigos.core.reported import reportable, unreportable

log = logging.getLogger("aigos.sdk")

MAX_BATCH = 500


class TelemetryBuffer:
    """A bounded, thread-safe queue of events waiting to be sent; the oldest are dropped when full.

    ``add`` keeps only what it must (type, time, data, ids): ids and timestamps are rendered when a batch
    is taken, off the guarded call's path.
    """

    def __init__(self, batch_size: int = 200, max_events: int = 10_000) -> None:
        self.batch_size = min(max(batch_size, 1), MAX_BATCH)
        self._events: deque[Pending] = deque(maxlen=max_events)
        self.dropped = 0
        self.sent = 0
        #: Events the server refused (a schema it holds to, a clock too far ahead): logged, never resent.
        self.refused = 0
        #: Set when a check refused what it carried: checks carry nothing until a flush has sent it.
        self.carry_held = False
        self.wake = threading.Event()

    def add(
        self,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        """Queue one event (``tool.completed``, ``llm.call``, ``custom.*`` ...).

        Raises ``ValueError`` at once for what the server would refuse: a malformed or server-owned type
        (``policy.*``, ``agent.*``, ...), data that is not JSON, or text and numbers the server's edge
        refuses (NUL, lone surrogates, NaN or infinite numbers, integers past 64 bits, deep nesting).
        """
        if not reportable(event_type):
            raise ValueError(f"{event_type!r} cannot be reported: use tool.*, llm.* or custom.* types")
        if data:
            try:
                orjson.dumps(data)
            except TypeError as exc:
                raise ValueError(f"telemetry data is not JSON: {exc}") from exc
        # Refused here as the server would refuse it: one bad event must not cost its whole batch.
        problem = unreportable(data, trace_id=trace_id, span_id=span_id)
        if problem is not None:
            raise ValueError(f"telemetry cannot be reported: {problem}")
        events = self._events
        if len(events) == events.maxlen:
            self.dropped += 1
        events.append((event_type, time.time(), data, trace_id, span_id))
        if len(events) >= self.batch_size and not self.wake.is_set():
            self.wake.set()

    def __len__(self) -> int:
        return len(self._events)

    def take(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Up to one batch (or ``limit``) of the oldest events, rendered (removed; ``put_back`` them on
        failure)."""
        batch: list[dict[str, Any]] = []
        size = self.batch_size if limit is None else limit
        while self._events and len(batch) < size:
            try:
                pending = self._events.popleft()
            except IndexError:
                break
            batch.append(pending if isinstance(pending, dict) else _render(pending))
            if len(batch) % 16 == 0:
                # Rendering runs on the flusher thread: let go of the GIL now and then, or a guarded call
                # waiting for it on another thread stalls for up to the 5 ms switch interval.
                time.sleep(0)
        return batch

    def put_back(self, batch: list[dict[str, Any]]) -> None:
        """Return an unsent batch to the front, so order is kept and nothing is lost while there is room."""
        room = (self._events.maxlen or 0) - len(self._events)
        keep = batch[-room:] if room > 0 else []
        self.dropped += len(batch) - len(keep)
        self._events.extendleft(reversed(keep))

    def flushed(self) -> None:
        """A flush has sent what was waiting: checks may carry events again."""
        self.carry_held = False

    def settle(self, batch: list[dict[str, Any]], answer: Any) -> tuple[int, bool]:
        """Account for the server's 202 to ``batch``: (how many it accepted, whether it gave some back).

        Events the event log had no room for (``TELEMETRY_BACKLOG``) return to the front, to be sent on
        the next flush; the others it names are counted in ``refused`` and logged, never sent again.
        """
        answer = answer if isinstance(answer, dict) else {}
        again: list[dict[str, Any]] = []
        for refusal in answer.get("refused") or ():
            index = refusal.get("index") if isinstance(refusal, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(batch):
                continue
            if refusal.get("code") == "TELEMETRY_BACKLOG":
                again.append(batch[index])
            else:
                self._refused(batch[index], refusal)
        if again:
            self.put_back(again)
        accepted = answer.get("accepted", 0)
        return (accepted if isinstance(accepted, int) else 0), bool(again)

    def refuse(self, batch: list[dict[str, Any]], problem: dict[str, Any]) -> None:
        """The server refused every event of ``batch`` (400): count and log them; resending cannot help."""
        listed = problem.get("errors")
        errors: list[Any] = listed if isinstance(listed, list) else []
        for index, event in enumerate(batch):
            error = errors[index] if index < len(errors) else None
            self._refused(event, error if isinstance(error, dict) else {})

    def _refused(self, event: dict[str, Any], refusal: dict[str, Any]) -> None:
        self.refused += 1
        log.warning(
            "aigos telemetry event %s refused by the server (%s): %s",
            event.get("event_type"),
            refusal.get("code", "refused"),
            refusal.get("detail", ""),
        )


Pending = tuple[str, float, dict[str, Any] | None, str | None, str | None] | dict[str, Any]


def _render(pending: tuple[str, float, dict[str, Any] | None, str | None, str | None]) -> dict[str, Any]:
    event_type, at, data, trace_id, span_id = pending
    event: dict[str, Any] = {
        "event_type": event_type,
        "timestamp": datetime.fromtimestamp(at, UTC).isoformat(),
        "data": data or {},
        # Stable across retries of the same batch: the server can tell a resend from a new event.
        "event_id": str(uuid.uuid4()),
    }
    if trace_id:
        event["trace_id"] = trace_id
    if span_id:
        event["span_id"] = span_id
    return event
