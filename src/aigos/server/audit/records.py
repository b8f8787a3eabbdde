"""What the event log records about itself: aggregated decisions, drops, set-aside entries, journal losses
and replays, and the tallies its metrics show.

Each is an ordinary entry in the tenant's own log (the system log, tenant ``0…0``, when a loss names no
tenant), so a gap in the record is itself on the record.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from aigos.server.audit import journal
from aigos.server.audit.events import NewEvent
from aigos.server.audit.journal import Bucket
from aigos.server.audit.orphans import Loss

log = structlog.get_logger("aigos.audit")

AGGREGATED_TYPE = "policy.decisions_aggregated"
DROPPED_TYPE = "audit.events_dropped"
LOST_TYPE = "audit.events_lost"
SET_ASIDE_TYPE = "audit.event_set_aside"
REPLAYED_TYPE = "audit.events_replayed"
#: Why an event was dropped (the ``reason`` of its ``audit.events_dropped`` entry).
QUEUE_FULL = "queue full"
UNJOURNALED = "journal unavailable"
#: Loss records get ids derived from where the loss is, so a replay done twice records it once.
_LOSS_IDS = uuid.UUID("5b0c3f9e-6d1a-4f7e-9a51-3c2b8e0d7a14")


@dataclass(slots=True)
class Tallies:
    """What this process's event log did, since it started (the ``aigos_eventlog_*`` metrics)."""

    appended: int = 0
    dropped: int = 0
    set_aside: int = 0
    spilled: int = 0
    replayed: int = 0
    lost: int = 0
    flush_failures: int = 0


def printable(text: str, limit: int) -> str:
    """``text`` with what the database refuses (NUL, lone surrogates) spelled out, cut to ``limit``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")[:limit]


def minute_of(moment: datetime) -> str:
    """The minute an allowed decision is counted in, as its aggregate names it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def aggregated_event(bucket: Bucket) -> NewEvent:
    """One tenant's allowed decisions of one minute, by agent, as one entry."""
    return NewEvent(
        tenant_id=bucket.tenant_id,
        event_type=AGGREGATED_TYPE,
        actor_type="system",
        actor_id="policy",
        outcome="allowed",
        data={"minute": bucket.label, "count": sum(bucket.counts.values()), "by_agent": dict(bucket.counts)},
        event_id=bucket.event_id,
    )


def dropped_event(bucket: Bucket) -> NewEvent:
    """How many of a tenant's events were dropped, and why."""
    return NewEvent(
        tenant_id=bucket.tenant_id,
        event_type=DROPPED_TYPE,
        actor_type="system",
        actor_id="audit",
        outcome="failure",
        data={"count": sum(bucket.counts.values()), "reason": bucket.label},
        event_id=bucket.event_id,
    )


def set_aside_event(event: NewEvent, reason: str, kept: bool) -> NewEvent:
    """That ``event`` was refused by the database and set aside (``kept`` in the spill folder or not)."""
    return NewEvent(
        tenant_id=event.tenant_id,
        event_type=SET_ASIDE_TYPE,
        actor_type="system",
        actor_id="audit",
        outcome="failure",
        data={
            "event_id": str(event.event_id),
            "event_type": printable(event.event_type, 100),
            "error": reason,
            "kept": kept,
        },
    )


def loss_event(owner: str, loss: Loss) -> NewEvent:
    """What a journal held but cannot give back (lines torn by a crash, or a damaged disk)."""
    log.error(
        "audit_journal_unreadable",
        process=owner,
        segment=loss.segment,
        offset=loss.offset,
        lines=loss.lines,
        bytes=loss.bytes,
    )
    return NewEvent(
        tenant_id=loss.tenant_id or journal.SYSTEM_TENANT,
        event_type=LOST_TYPE,
        actor_type="system",
        actor_id="audit",
        outcome="failure",
        data={
            # Each unreadable line held one record or more (a region of zeros may have held several).
            "count": loss.lines,
            "bytes": loss.bytes,
            "process": owner,
            "file": loss.segment,
            "offset": loss.offset,
            "from": loss.after,
            "to": loss.before,
            "reason": "unreadable journal lines (a write torn by a crash, or a damaged disk)",
        },
        event_id=uuid.uuid5(_LOSS_IDS, f"{owner}/{loss.segment}/{loss.offset}"),
    )


def replayed_event(tenant_id: uuid.UUID, appended: int, present: int, origin: dict[str, str]) -> NewEvent:
    """That a tenant's events left by an earlier process were replayed (``present`` already were)."""
    return NewEvent(
        tenant_id=tenant_id,
        event_type=REPLAYED_TYPE,
        actor_type="system",
        actor_id="audit",
        data={"count": appended, "already_present": present, **origin},
    )
