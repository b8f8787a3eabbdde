"""Simulating a check (``POST /v1/policies/simulate``): a hypothetical request decided against the saved
policies, drafts, or both, with the full trace. Nothing is spent and nothing is recorded."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import policy as core
from aigos.core.policy.decision import TraceStep, trace_step
from aigos.server.aigrc import service as cards
from aigos.server.errors import BadRequest
from aigos.server.identity import subjects
from aigos.server.policy import limits, service
from aigos.server.policy.budgets import BudgetBook
from aigos.server.policy.pieces import in_pieces
from aigos.server.policy.schemas import SimulateIn
from aigos.server.policy.state import PolicyState, select_in_pieces
from aigos.server.tenancy.plans import Plan


async def simulate(
    state: PolicyState,
    budgets: BudgetBook,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    plan: Plan,
    body: SimulateIn,
) -> dict[str, Any]:
    """The simulated decision (``SimulateOut``'s fields). Budgets are read as they stand; drafts are held
    to the plan's limits on saved policies, and their number to its ``drafts``."""
    limits.check_drafts(plan, len(body.policies))
    subject = await _subject(session, tenant_id, body)
    version = await service.set_version(session, tenant_id)
    drafts: dict[str, dict[str, Any]] = {}
    for index, draft in enumerate(body.policies):
        document = service.document_of(draft.id or uuid.uuid4(), draft)
        limits.check_document(plan, document, f"/policies/{index}")
        await service.check_document(document, f"/policies/{index}")
        drafts[document["id"]] = document
        await asyncio.sleep(0)  # each draft may take a while to check: let other requests in between
    saved: tuple[Any, ...] = ()
    if not body.only_drafts:
        # The saved policies as this replica compiled them for checks (at the version read above or
        # newer): only the drafts are compiled here, each in place of the saved policy of its id.
        current = await state.policy_set_at_least(tenant_id, version)
        version, saved = current.version, current.policies
    # Frozen as it is built, though dropped after this request: else each full pass of the garbage
    # collector (one per 70,000 allocations once the saved set is frozen) walks all of it built so far.
    policies = await in_pieces(core.PolicySet.amending(version, saved, drafts.values()), freezing=True)
    context = body.request.context.model_dump(exclude_none=True)
    request = core.Request.of(body.request.action, body.request.resource, context, at=body.at)
    effective = await select_in_pieces(policies, subject, request.action, request)
    decision = core.evaluate(effective, subject, request, trace=True)
    del effective
    await in_pieces(policies.releasing())  # freed a piece at a time, not all at the return
    if decision.budgets:
        spent = await budgets.spent(tenant_id, decision.budgets)
        decision = decision.with_spent(spent)
    answer = decision.to_json()
    answer["policy_version"] = version
    if body.agent_id is not None:
        step = await _card_step(session, tenant_id, body.agent_id, request)
        if step is not None:
            # Right after the kill switch: the card bounds the capabilities the next stage checks.
            trace = answer["trace"]
            at = 1 if trace and trace[0]["stage"] == "kill_switch" else 0
            trace.insert(at, step)
    return answer


async def _card_step(
    session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, request: core.Request
) -> TraceStep | None:
    """The trace line of the asset card the agent is bound by (``None`` without one): what the card
    allows, and whether the request's tool and domain are within it."""
    card_id = await subjects.asset_card_of(session, tenant_id, agent_id)
    record = await cards.find(session, tenant_id, card_id) if card_id else None
    if record is None:
        return None
    bounds = cards.card_of(record).capabilities
    if bounds is None:
        return trace_step("asset_card", "skip", f"Asset card {record.card_id} bounds no capability.")
    within = core.Subject.of("card", capabilities=bounds.to_claim())
    tool = request.tool.lower() if request.tool else None
    outside = (tool is not None and not within.tool_matcher(tool)) or (
        request.domain is not None and not within.domain_matcher(request.domain)
    )
    detail = (
        f"Asset card {record.card_id} (version {record.version}) bounds the agent to tools "
        f"{list(bounds.tools)}, domains {list(bounds.domains)}, max_budget {bounds.max_budget}."
    )
    return trace_step("asset_card", "deny" if outside else "pass", detail)


async def _subject(session: AsyncSession, tenant_id: uuid.UUID, body: SimulateIn) -> core.Subject:
    """The registered agent the simulation names (as identity knows it), or its hypothetical one."""
    if body.agent_id is not None:
        found = await subjects.subject(session, tenant_id, body.agent_id)
        if found is None:
            raise BadRequest(f"/agent_id: no agent {body.agent_id} in this tenant", code="AGENT_NOT_FOUND")
        return found
    assert body.agent is not None
    spec = body.agent
    return core.Subject.of(
        "simulated",
        status=spec.status,
        capabilities=spec.capabilities,
        agent_type=spec.agent_type,
        owner=spec.owner,
        deployment_env=spec.deployment_env,
        metadata=spec.metadata,
    )
