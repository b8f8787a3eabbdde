"""The policy an asset card derives: its runtime constraints, enforced by the policy engine like any policy.

A card whose ``constraints.runtime.maxCostPerRequestUsd`` is set gets one policy, saved and versioned as an
administrator's would be, named after the card: it targets the agents registered against the card (by the
label ``aigrc_asset_card``, which only registration sets) and denies a check whose ``estimated_cost`` is
above the ceiling (rule ``asset-card-max-cost-per-request``, ``CUSTOM_DENIED``). It is replaced when the card
changes and deleted when the constraint goes, so it is in ``GET /v1/policies``, in every simulation's trace
and in each agent's signed bundle, and its changes are on the log as ``policy.*`` events. The card's
capabilities are not repeated in it: they bound the agents' own (``binding``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import assetcard
from aigos.server.aigrc.models import AssetCardRecord
from aigos.server.audit.events import NewEvent
from aigos.server.audit.log import EventLog
from aigos.server.policy import service as policies
from aigos.server.policy.schemas import PolicyIn
from aigos.server.policy.state import PolicyState
from aigos.server.tenancy.plans import Plan

MAX_COST_RULE = "asset-card-max-cost-per-request"


def derived_policy(card: assetcard.AssetCard) -> PolicyIn | None:
    """The policy ``card`` derives, or ``None`` when it constrains nothing the engine enforces."""
    if card.max_cost_per_request is None:
        return None
    rule: dict[str, Any] = {
        "id": MAX_COST_RULE,
        "effect": "deny",
        "conditions": {"cost": {"gt": card.max_cost_per_request}},
        "description": f"constraints.runtime.maxCostPerRequestUsd of asset card {card.id}",
    }
    return PolicyIn.model_validate(
        {
            "name": f"AIGRC asset card {card.id}",
            "description": "Derived from the asset card's runtime constraints; replaced as the card changes.",
            "target": {"kind": "selector", "selector": {"labels": {assetcard.AGENT_LABEL: card.id}}},
            "rules": [rule],
        }
    )


async def apply(
    session: AsyncSession,
    events: EventLog,
    state: PolicyState,
    record: AssetCardRecord,
    card: assetcard.AssetCard,
    plan: Plan,
    recorded_as: Callable[[str, dict[str, Any]], NewEvent],
) -> None:
    """Create, replace or delete the card's derived policy to match the card as just saved."""
    spec = derived_policy(card)
    tenant_id, actor = record.tenant_id, f"asset_card:{card.id}"
    if spec is None:
        if record.policy_id is not None:
            policy, version = await policies.delete(session, tenant_id, record.policy_id, actor, plan)
            record.policy_id = None
            await policies.changed(events, state, session, recorded_as, "policy.deleted", policy, version)
        return
    if record.policy_id is None:
        policy_id = uuid.uuid4()
        policy, version = await policies.create(session, tenant_id, spec, actor, plan, policy_id)
        record.policy_id = policy_id
        await policies.changed(events, state, session, recorded_as, "policy.created", policy, version)
        return
    policy, version = await policies.replace(session, tenant_id, record.policy_id, spec, actor, plan)
    await policies.changed(events, state, session, recorded_as, "policy.updated", policy, version)
