"""What registering against an asset card means: the card bounds the agent, and lends it its Golden Thread.

An agent naming ``asset_card_id`` at registration must name a card of its tenant that may run (not
``revoked`` or ``deprecated``, not of ``unacceptable`` risk), may ask for no tool, domain or budget beyond
the card's ``runtime.capabilities`` (asking for none gives it the card's; asking for no budget, the card's
budget), and carries the card's Golden
Thread unless it states its own. An unverified thread registers the agent (marked unverified in its token)
unless the card says ``verification_failure_mode: FAIL`` or the tenant requires verified threads.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import assetcard, goldenthread
from aigos.core.delegation import capabilities_of
from aigos.server.aigrc import service
from aigos.server.errors import BadRequest, Forbidden
from aigos.server.identity import agents
from aigos.server.identity.state import IdentityState

#: Card statuses whose agents may not register.
RETIRED = frozenset({"revoked", "deprecated"})


@dataclass(frozen=True, slots=True)
class Bound:
    """What the card makes of a registration: the capabilities to store, the Golden Thread to carry."""

    capabilities: dict[str, Any]
    golden_thread: dict[str, Any] | None
    card: assetcard.AssetCard


async def bind(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    card_id: str,
    capabilities: dict[str, Any],
    golden_thread: dict[str, Any] | None,
    *,
    asked_for_capabilities: bool,
    require_verified: bool,
) -> Bound:
    """The registration's capabilities and Golden Thread as card ``card_id`` allows them (see the module).

    ``golden_thread`` is the registration's own, as ``identity.agents.golden_thread_record`` made it.
    400 ``ASSET_CARD_NOT_FOUND``; 403 ``ASSET_CARD_NOT_ACTIVE``, ``ASSET_CARD_PROHIBITED``,
    ``EXCEEDS_ASSET_CARD`` (naming each excess) or ``GOLDEN_THREAD_UNVERIFIED``.
    """
    record = await service.find(session, tenant_id, card_id)
    if record is None:
        raise BadRequest(
            f"No asset card {card_id!r} in this tenant: upload it first (POST /v1/aigrc/asset-cards).",
            code="ASSET_CARD_NOT_FOUND",
        )
    card = service.card_of(record)
    if card.status in RETIRED:
        raise Forbidden(f"Asset card {card_id} is {card.status}.", code="ASSET_CARD_NOT_ACTIVE")
    if card.risk_level == "unacceptable":
        raise Forbidden(
            f"Asset card {card_id} classifies the system as of unacceptable risk: it may not run.",
            code="ASSET_CARD_PROHIBITED",
        )
    bounded = _bounded(card, capabilities, asked_for_capabilities)
    thread = golden_thread if golden_thread is not None else _card_thread(card)
    verified = bool(thread and thread.get("verified"))
    if not verified and (require_verified or card.verification_failure_mode == "FAIL"):
        why = "the tenant requires it" if require_verified else "the card's verification_failure_mode is FAIL"
        raise Forbidden(
            f"The Golden Thread is missing or does not verify, and {why}.", code="GOLDEN_THREAD_UNVERIFIED"
        )
    return Bound(bounded, thread, card)


def _bounded(card: assetcard.AssetCard, capabilities: dict[str, Any], asked: bool) -> dict[str, Any]:
    bounds = card.capabilities
    if bounds is None:
        return capabilities
    if not asked:
        return bounds.to_claim()
    if capabilities.get("max_budget") is None and bounds.max_budget is not None:
        # No ceiling asked for: the card's is the agent's, rather than a refusal for asking "unlimited".
        capabilities = {**capabilities, "max_budget": bounds.max_budget}
    excess = bounds.covers(capabilities_of(capabilities))
    if excess:
        raise Forbidden(
            f"The agent would exceed asset card {card.id}: " + "; ".join(excess) + ".",
            code="EXCEEDS_ASSET_CARD",
            asset_card_id=card.id,
            exceeding=excess,
        )
    return capabilities


def _card_thread(card: assetcard.AssetCard) -> dict[str, Any] | None:
    thread = card.golden_thread
    if thread is None:
        return None
    result = assetcard.verify_golden_thread(card) or goldenthread.Verification(False, None)
    return {
        "hash": thread.hash,
        "ticket_id": thread.ticket_id,
        "verified": result.verified,
        "form": result.form,
        "approved_by": thread.approved_by,
        "approved_at": thread.approved_at,
        "source": "asset_card",
    }


async def narrow_bound_agents(
    session: AsyncSession, identity: IdentityState, tenant_id: uuid.UUID, card: assetcard.AssetCard
) -> int:
    """After a card changed: cut its live agents' stored capabilities down to its new bounds, and have
    every replica forget their cached claims, so their next tokens carry the narrower set. How many changed.
    """
    if card.capabilities is None:
        return 0
    changed = await agents.narrow_to_card(session, tenant_id, card.id, card.capabilities)
    for agent_id in changed:
        await identity.announce_agent_changed(agent_id)
    return len(changed)
