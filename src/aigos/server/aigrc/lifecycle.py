"""What follows a card's save, whichever way it came (upload, directory import, sync): the policy it
derives matched to it, and, when it changed, its live agents cut down to its new bounds."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import assetcard
from aigos.server.aigrc import binding, derived
from aigos.server.aigrc.service import Recorder, Saved
from aigos.server.audit.log import EventLog
from aigos.server.identity.state import IdentityState
from aigos.server.policy.state import PolicyState
from aigos.server.tenancy.plans import Plan


async def after_save(
    session: AsyncSession,
    events: EventLog,
    identity: IdentityState,
    policies: PolicyState,
    saved: Saved,
    card: assetcard.AssetCard,
    plan: Plan,
    recorded_as: Recorder,
) -> None:
    """Apply a new or changed card, in the save's transaction (an unchanged one changes nothing)."""
    if saved.change == "unchanged":
        return
    await derived.apply(session, events, policies, saved.record, card, plan, recorded_as)
    if saved.change != "updated":
        return
    record = saved.record
    narrowed = await binding.narrow_bound_agents(session, identity, record.tenant_id, card)
    if narrowed:
        data: dict[str, Any] = {"asset_card_id": card.id, "version": record.version, "agents": narrowed}
        await events.record(recorded_as("asset_card.agents_narrowed", data), session)
