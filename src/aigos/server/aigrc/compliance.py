"""A card's compliance status, from the card and from what the event log observed of its agents.

The judging is ``aigos.core.compliance``'s; this module gathers its inputs: the card as saved, its live
agents (identity), and counts of their governance events (the event log). The report is dated by what it
was computed from (the card's last change or the newest event counted), never by the clock, so the same
card and the same log give the same report, and its hash, whenever it is asked for.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import compliance
from aigos.server.aigrc import service
from aigos.server.audit import service as audit
from aigos.server.identity import agents

#: What the event log tells about a card's agents, counted per agent.
AGENT_EVENTS = ("policy.checked", "policy.violated", "kill_switch.triggered", "kill_switch.acknowledged")
#: Kill-switch events about no single agent: a tenant-wide stop reaches every agent of the card.
TENANT_WIDE = ("kill_switch.triggered",)


async def report(
    session: AsyncSession, tenant_id: uuid.UUID, card_id: str, profiles: list[str] | None = None
) -> dict[str, Any]:
    """The compliance report of the tenant's card ``card_id`` (see ``aigos.core.compliance.status``),
    with ``report_hash`` added: ``sha256:`` of the report without it, under canonical JSON."""
    record = await service.get(session, tenant_id, card_id)
    live = await agents.bound_to_card(session, tenant_id, card_id)
    counted = await audit.tally(
        session, tenant_id, AGENT_EVENTS, [str(agent_id) for agent_id, _ in live], tenant_wide=TENANT_WIDE
    )
    threads = [thread for _, thread in live if thread]
    latest = max(filter(None, (record.updated_at, counted.latest)))
    evidence = compliance.RuntimeEvidence(
        agents_live=len(live),
        decisions_logged=counted.counts["policy.checked"],
        violations=counted.counts["policy.violated"],
        kill_switch_triggers=counted.counts["kill_switch.triggered"],
        kill_switch_acknowledged=counted.counts["kill_switch.acknowledged"],
        golden_thread_verified=all(t.get("verified") for t in threads) if threads else None,
        human_oversight=bool((record.document.get("constraints") or {}).get("humanApprovalRequired")),
        last_event_at=_iso(counted.latest) if counted.latest else None,
    )
    result = compliance.status(record.document, evidence, generated_at=_iso(latest), profiles=profiles)
    result["asset_card_version"] = record.version
    result["content_hash"] = record.content_hash
    result["report_hash"] = compliance.report_hash(result)
    return result


def _iso(moment: Any) -> str:
    return str(moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
