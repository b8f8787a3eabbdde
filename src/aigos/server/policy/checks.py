"""Deciding a check (``POST /v1/policies/check``): the agent's subject and policy set from the replica's
state, the evaluation, rate limits and budgets counted, the decision recorded, the answer made.

This is the product's hot path: no database round trip once warm, and nothing here a check does not need.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

from aigos.core import policy as core
from aigos.server.audit.events import NewEvent, current_request_id
from aigos.server.audit.log import EventLog
from aigos.server.identity.agent_auth import AgentPrincipal, require_scope
from aigos.server.policy.budgets import BudgetBook
from aigos.server.policy.schemas import CheckIn
from aigos.server.policy.state import PolicyState, select_in_pieces
from aigos.server.telemetry import metrics
from aigos.server.telemetry.schemas import TelemetryEvent
from aigos.server.telemetry.service import reported_events
from aigos.server.tenancy.usage import UsageMeter

#: Which event a decision is recorded as.
_EVENT = {None: "policy.checked", core.Code.BUDGET_EXCEEDED.value: "budget.exceeded"}


class Halts(Protocol):
    """The kill switch's fleet halts, as this replica holds them (``killswitch.halts.Halts``)."""

    async def halted(self, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> str | None:
        """``paused`` / ``terminated`` if a fleet halt in force covers the agent, else None."""
        ...

    async def resuming(self, tenant_id: uuid.UUID, agent_id: uuid.UUID, paused_at: float) -> bool:
        """Whether a fleet RESUME issued after ``paused_at``, its bookkeeping not done yet, covers the
        agent."""
        ...


class Statuses(Protocol):
    """When agents' statuses were set, as this replica heard (``identity.state.IdentityState``)."""

    def status_since(self, agent_id: uuid.UUID) -> float:
        """Unix time of the agent's current status (0 if never heard)."""
        ...


class Checks:
    """What deciding a check takes: the replica's policy state, the budgets, the event log, the usage
    counters and the kill switch's fleet halts."""

    __slots__ = ("budgets", "events", "halts", "state", "statuses", "usage")

    def __init__(
        self,
        state: PolicyState,
        budgets: BudgetBook,
        events: EventLog,
        usage: UsageMeter,
        halts: Halts | None = None,
        statuses: Statuses | None = None,
    ) -> None:
        self.state = state
        self.budgets = budgets
        self.events = events
        self.usage = usage
        self.halts = halts
        self.statuses = statuses

    async def decide(self, agent: AgentPrincipal, body: CheckIn, started: float) -> dict[str, Any]:
        """The answer to ``body`` for ``agent`` (a denial is an answer too), its decision recorded;
        ``started`` is when the request came in (``time.perf_counter``), for its ``latency_ms``."""
        carried = _carried(agent, body.telemetry) if body.telemetry else ()
        state = self.state
        state.ensure_live()
        status = agent.status.value
        if self.halts is not None and status != "terminated":
            # The kill switch first: a fleet halt denies at once, whatever the agent's own status says yet
            # (its bookkeeping may still be on the way), with the same codes as a paused or killed agent.
            halted = await self.halts.halted(agent.tenant_id, agent.agent_id)
            if halted is not None and (status == "active" or halted == "terminated"):
                status = halted
            elif halted is None and status == "paused" and self.statuses is not None:
                paused_at = self.statuses.status_since(agent.agent_id)
                if await self.halts.resuming(agent.tenant_id, agent.agent_id, paused_at):
                    # A fleet RESUME issued since the pause lifts it; its bookkeeping will set the status.
                    status = "active"
        subject = await state.subject(agent.tenant_id, agent.agent_id, status, agent.claims)
        policies = await state.policy_set(agent.tenant_id)
        asked = core.Request.of(body.action, body.resource, body.context.model_dump(exclude_none=True))
        effective = await select_in_pieces(policies, subject, body.action, asked)
        decision = core.evaluate(effective, subject, asked, trace=body.trace)
        if decision.needs_rate:
            decision = await self.budgets.count_rates(agent.tenant_id, decision)
        if decision.needs_budget:
            decision = await self.budgets.settle(agent.tenant_id, decision)
        decision_id = uuid.uuid4()
        self._record(agent, asked, decision, decision_id, policies.version)
        for event in carried:
            # A full queue drops and counts it, as it would a telemetry batch's; the decision still stands.
            self.events.enqueue(event)
        answer = decision.to_json()
        elapsed = time.perf_counter() - started
        answer.update(
            decision_id=str(decision_id), policy_version=policies.version, latency_ms=round(elapsed * 1000, 3)
        )
        if metrics.enabled:
            metrics.checked(decision.allowed, decision.code, elapsed)
        return answer

    def _record(
        self,
        agent: AgentPrincipal,
        asked: core.Request,
        decision: core.Decision,
        decision_id: uuid.UUID,
        version: int,
    ) -> None:
        self.usage.count(agent.tenant_id, "policy_checks")
        event_type = "policy.checked" if decision.allowed else _EVENT.get(decision.code, "policy.violated")
        data: dict[str, Any] = {
            "decision_id": str(decision_id),
            "action": asked.action,
            "resource": asked.resource,
            "context": asked.context,
            "allowed": decision.allowed,
            "code": decision.code,
            "stage": decision.stage,
            "matched_rule": decision.matched_rule,
            "policy_id": decision.policy_id,
            "budget_remaining": decision.budget_remaining,
            "policy_version": version,
        }
        if decision.would_deny:
            data["would_deny"] = [item.to_json() for item in decision.would_deny]
        aggregate = self.state.aggregates(agent.tenant_id) and not decision.would_deny
        self.events.enqueue(
            NewEvent(
                tenant_id=agent.tenant_id,
                event_type=event_type,
                actor_type="agent",
                actor_id=str(agent.agent_id),
                agent_id=str(agent.agent_id),
                data=data,
                outcome="allowed" if decision.allowed else "denied",
                request_id=current_request_id(),
            ),
            aggregate_allowed=aggregate,
        )


def _carried(agent: AgentPrincipal, items: list[TelemetryEvent]) -> list[NewEvent]:
    """The outcomes a check carries, as ``POST /v1/telemetry`` would record them; checked before deciding."""
    require_scope(agent, "telemetry:write")
    return reported_events(agent, items, "telemetry")
