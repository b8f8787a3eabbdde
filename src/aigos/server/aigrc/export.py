"""Back to AIGRC: what the event log holds about an asset card's agents, as EVT-001 envelopes.

The same envelopes go two ways: a file (``GET /v1/aigrc/asset-cards/{id}/export``, NDJSON, one envelope per
line: first each live agent of the card as ``agent.live``, then their governance events in log order) and a
signed webhook (``webhook.py``). Each envelope's ``goldenThread`` links the card's approval ticket, or says
why there is none; ``data`` carries the log entry's ``seq`` and ``event_id``, so an envelope traces back to
the entry it came from.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import orjson

from aigos.core import aigrcevents
from aigos.server.aigrc.models import AssetCardRecord
from aigos.server.audit import service as audit
from aigos.server.db import Database
from aigos.server.identity import agents

#: What the log says about a card's agents that AIGRC wants: their decisions, violations and stops.
EXPORTED = (
    "agent.registered",
    "agent.terminated",
    "policy.checked",
    "policy.violated",
    "kill_switch.triggered",
    "kill_switch.acknowledged",
)
#: Entries read per page.
PAGE = 1_000


def thread_of(record: AssetCardRecord) -> dict[str, Any]:
    """The ``goldenThread`` of the card's envelopes."""
    thread = record.golden_thread
    if thread and thread.get("ticket_id"):
        return aigrcevents.linked_thread(str(thread["ticket_id"]), bool(thread.get("verified")))
    declared = record.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return aigrcevents.orphan_thread("the asset card has no golden_thread", "aigos", declared)


def from_entry(tenant_id: uuid.UUID, record: AssetCardRecord, entry: dict[str, Any]) -> dict[str, Any]:
    """The envelope of one exported log entry about an agent of the card."""
    data = {
        "seq": entry["seq"],
        "event_id": entry["event_id"],
        "agent_id": entry["agent_id"],
        "outcome": entry["outcome"],
        "data": entry["data"],
    }
    at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
    return aigrcevents.envelope(
        str(tenant_id), entry["event_type"], record.card_id, at, data, thread_of(record)
    )


def line(envelope: dict[str, Any]) -> bytes:
    """One NDJSON line."""
    return orjson.dumps(envelope) + b"\n"


async def lines(database: Database, tenant_id: uuid.UUID, record: AssetCardRecord) -> AsyncIterator[bytes]:
    """The card's export, a line at a time, read a page at a time (a transaction per page)."""
    async with database.session(tenant_id) as session:
        live = await agents.bound_to_card(session, tenant_id, record.card_id)
    thread = thread_of(record)
    for agent_id, golden_thread in live:
        data = {"agent_id": str(agent_id), "golden_thread": golden_thread}
        yield line(
            aigrcevents.envelope(
                str(tenant_id), "agent.live", record.card_id, record.updated_at, data, thread
            )
        )
    async for entry in entries(database, tenant_id, [str(agent_id) for agent_id, _ in live], after=0):
        yield line(from_entry(tenant_id, record, entry))


async def entries(
    database: Database, tenant_id: uuid.UUID, agent_ids: Sequence[str], *, after: int
) -> AsyncIterator[dict[str, Any]]:
    """Exported log entries about ``agent_ids`` after ``seq`` ``after``, in log order."""
    if not agent_ids:
        return
    while True:
        async with database.session(tenant_id) as session:
            page = await audit.about_agents(session, tenant_id, EXPORTED, agent_ids, after=after, limit=PAGE)
        for entry in page:
            yield entry
        if len(page) < PAGE:
            return
        after = page[-1]["seq"]
