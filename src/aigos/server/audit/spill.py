"""Buffered events kept on disk when the database cannot take them: spilled at shutdown, replayed at start.

A spill file holds one event per line as JSON, in the form ``encode`` gives it (the event journal uses the
same form; any text survives the round trip, even what the database refused). Files are named
``spill-<pid>-<time>.jsonl`` in the spill folder. A process that replays one first renames it to
``*.replaying-<pid>`` so that two workers starting on one folder never replay the same file; a file left in
that state by a process that no longer runs is taken over.

Events set aside by the batch writer (refused by the database however often retried) go to
``set-aside.jsonl`` in the same folder, with the error: kept for an operator, never replayed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from aigos.server.audit.events import NewEvent
from aigos.server.processes import alive

SPILL_GLOB = "spill-*.jsonl"
SET_ASIDE_NAME = "set-aside.jsonl"
_REPLAYING = ".replaying-"


def _fields(event: NewEvent) -> dict[str, Any]:
    # The one list of fields, with their values as they are (UUIDs, a datetime, ``data`` as its JSON text):
    # orjson writes those itself, faster than converting each here (the journal does this per request).
    return {
        "tenant_id": event.tenant_id,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "data": orjson.Fragment(event.data_text),
        "agent_id": event.agent_id,
        "outcome": event.outcome,
        "source": event.source,
        "occurred_at": event.occurred_at or datetime.now(UTC),
        "request_id": event.request_id,
        "trace_id": event.trace_id,
        "span_id": event.span_id,
    }


def to_record(event: NewEvent) -> dict[str, Any]:
    """``event`` as a JSON object; ``occurred_at`` is fixed now if the event left it to the append.

    The tenant comes first: a line cut short still names it. ``data`` is the canonical text.
    """
    record = _fields(event)
    record.update(
        tenant_id=str(event.tenant_id),
        event_id=str(event.event_id),
        data=event.data_text,
        occurred_at=record["occurred_at"].isoformat(),
    )
    return record


def encode(event: NewEvent, **extra: Any) -> bytes:
    """The event (plus ``extra``) as one line of JSON, without the newline: ``to_record``'s object, with
    ``data`` as the JSON it already is rather than a string.

    Text no UTF-8 encoder takes (a lone surrogate, which the database refuses too) is escaped.
    """
    record = _fields(event)
    record.update(extra)
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError:
        fallback = to_record(event)
        fallback.update(extra, data=json.loads(event.data_text))
        return json.dumps(fallback, ensure_ascii=True, separators=(",", ":")).encode()


def from_record(record: dict[str, Any]) -> NewEvent:
    """The event a ``to_record`` object (or an ``encode`` line, parsed) describes."""
    data = record["data"]
    return NewEvent(
        tenant_id=uuid.UUID(record["tenant_id"]),
        event_type=record["event_type"],
        actor_type=record["actor_type"],
        actor_id=record["actor_id"],
        data=json.loads(data) if isinstance(data, str) else data,
        agent_id=record["agent_id"],
        outcome=record["outcome"],
        source=record["source"],
        occurred_at=datetime.fromisoformat(record["occurred_at"]),
        request_id=record["request_id"],
        trace_id=record["trace_id"],
        span_id=record["span_id"],
        event_id=uuid.UUID(record["event_id"]),
    )


def _write_lines(path: Path, lines: Iterable[bytes], *, append: bool = False) -> None:
    # Written, flushed and fsynced before the caller reports the events as kept.
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        for line in lines:
            handle.write(line + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def spill(folder: Path, events: Iterable[NewEvent]) -> Path:
    """Write ``events`` to a new spill file in ``folder`` (made 0700 if missing); returns its path."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"spill-{os.getpid()}-{time.time_ns()}.jsonl"
    _write_lines(path, (encode(event) for event in events))
    return path


def set_aside(folder: Path, event: NewEvent, error: str) -> None:
    """Keep an event the database refused, with why, for an operator to look at."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = encode(event, error=error, set_aside_at=datetime.now(UTC).isoformat())
    _write_lines(folder / SET_ASIDE_NAME, [line], append=True)


def claim(folder: Path) -> list[Path]:
    """Take the spill files in ``folder`` that no running process is replaying; oldest first."""
    if not folder.is_dir():
        return []
    claimed: list[Path] = []
    mine = f"{_REPLAYING}{os.getpid()}"
    candidates = sorted(folder.glob(SPILL_GLOB)) + sorted(folder.glob(f"spill-*.jsonl{_REPLAYING}*"))
    for path in candidates:
        if _REPLAYING in path.name:
            owner = path.name.rsplit(_REPLAYING, 1)[1]
            if not owner.isdigit() or alive(int(owner)):
                continue
            target = path.with_name(path.name.rsplit(_REPLAYING, 1)[0] + mine)
        else:
            target = path.with_name(path.name + mine)
        try:
            # Atomic: of two processes renaming one file, one succeeds and the other finds it gone.
            path.rename(target)
        except FileNotFoundError:
            continue
        claimed.append(target)
    return claimed


def read(path: Path) -> list[NewEvent]:
    """The events of a spill file, in the order they were queued."""
    with path.open("rb") as handle:
        return [from_record(json.loads(line)) for line in handle if line.strip()]
