"""A tenant's chain: hashing entries onto its head, the part of appending both backends share.

Appends to one tenant's log are strictly sequential across every process, so the sequence stays gap-free
and the chain linear; different tenants append in parallel. Each process remembers the heads it last saw
(``Heads``) and hashes a segment onto the remembered head; ``append_postgres`` and ``append_sqlite`` move
the head in the database, each in its own way, and rehash when another writer got there first.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aigos.core import auditlog
from aigos.core.canonical import parse
from aigos.core.merkle import CompactRange
from aigos.server.audit.events import NewEvent
from aigos.server.audit.models import AuditEvent
from aigos.server.db.types import utcnow

#: Entries hashed between two chances for other coroutines to run (about 25 µs of work).
YIELD_EVERY = 4
#: Tenants whose heads one process remembers; past that the memory starts over (a miss costs a round trip).
HEADS_KEPT = 10_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def isoformat(moment: datetime) -> str:
    """The one timestamp format inside hashed entries: UTC, microseconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_of(row: AuditEvent) -> dict[str, Any]:
    """The hashed entry of a stored row, as exported (without ``hash`` and ``kind``)."""
    return {
        "tenant_id": str(row.tenant_id),
        "seq": row.seq,
        "event_id": str(row.event_id),
        "event_type": row.event_type,
        "agent_id": row.agent_id,
        "timestamp": isoformat(row.occurred_at),
        "recorded_at": isoformat(row.recorded_at),
        "actor": {"type": row.actor_type, "id": row.actor_id},
        "source": row.source,
        "outcome": row.outcome,
        "request_id": row.request_id,
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "data": parse(row.data),
        "prev_hash": row.prev_hash,
    }


@dataclass(frozen=True, slots=True)
class Head:
    """A tenant log's newest entry: what the next entry is hashed onto."""

    seq: int
    hash: str
    recorded_at: datetime
    compact_range: dict[str, Any]


GENESIS = Head(0, auditlog.GENESIS_HASH, EPOCH, CompactRange().to_json())


class Heads(dict[uuid.UUID, Head]):
    """The heads this process last appended or saw, per tenant (a hint: the database has the last word)."""

    def remember(self, tenant_id: uuid.UUID, head: Head) -> None:
        """Keep ``head`` as the tenant's, forgetting everything once too many tenants are kept."""
        if len(self) >= HEADS_KEPT and tenant_id not in self:
            self.clear()
        self[tenant_id] = head


@dataclass(slots=True)
class Segment:
    """Events hashed onto a head: the rows to insert, the entries as stored, and the head after them."""

    rows: list[tuple[Any, ...]]
    stored: list[dict[str, Any]]
    head: Head


#: Called between two groups of ``YIELD_EVERY`` entries: the event loop's chance to serve others.
Pause = Callable[[], Awaitable[None]]


async def yield_to_loop() -> None:
    """The default ``Pause``: one turn of the event loop."""
    await asyncio.sleep(0)


async def chain(
    tenant_id: uuid.UUID,
    head: Head,
    events: Sequence[NewEvent],
    *,
    pause: Pause = yield_to_loop,
    entries: bool = True,
) -> Segment:
    """Hash ``events`` (all of ``tenant_id``) in order onto ``head``.

    ``pause`` is awaited every ``YIELD_EVERY`` entries; without ``entries`` the segment's ``stored`` stays
    empty (a batch writer has no caller to return them to).
    """
    compact = CompactRange.from_json(head.compact_range)
    # Never earlier than the previous entry, even if this process's clock is behind another's: retention
    # prunes by time, and must cut the chain only at a prefix.
    recorded = max(utcnow(), head.recorded_at)
    recorded_text = isoformat(recorded)
    tenant_text = str(tenant_id)
    seq, prev = head.seq, head.hash
    rows: list[tuple[Any, ...]] = []
    stored: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        if event.tenant_id != tenant_id:
            raise ValueError("append() takes events of one tenant")
        if index and index % YIELD_EVERY == 0:
            # Hashing a large batch is CPU work on the server's event loop: let requests through meanwhile.
            await pause()
        seq += 1
        occurred = event.occurred_at or recorded
        entry = {
            "tenant_id": tenant_text,
            "seq": seq,
            "event_id": str(event.event_id),
            "event_type": event.event_type,
            "agent_id": event.agent_id,
            "timestamp": recorded_text if event.occurred_at is None else isoformat(occurred),
            "recorded_at": recorded_text,
            "actor": {"type": event.actor_type, "id": event.actor_id},
            "source": event.source,
            "outcome": event.outcome,
            "request_id": event.request_id,
            "trace_id": event.trace_id,
            "span_id": event.span_id,
            # The value itself, not its parsed text: canonical JSON of both is the same bytes.
            "data": dict(event.data),
            "prev_hash": prev,
        }
        entry_prev = prev
        prev = auditlog.fields_hash(entry)
        compact.append(auditlog.entry_leaf(prev))
        if entries:
            stored.append({**entry, "hash": prev})
        rows.append(
            (
                seq,
                event.event_id,
                event.event_type,
                event.agent_id,
                occurred,
                event.actor_type,
                event.actor_id,
                event.source,
                event.outcome,
                event.request_id,
                event.trace_id,
                event.span_id,
                event.data_text,
                entry_prev,
                prev,
            )
        )
    return Segment(rows, stored, Head(seq, prev, recorded, compact.to_json()))
