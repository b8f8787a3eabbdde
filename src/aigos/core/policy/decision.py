"""The answer to a check: ``Decision``, the budgets and rate limits it may wait on, and how a cost settles
against budgets.

What a decision says, as every layer shows it, is defined once here: ``Verdict`` (its fields),
``WouldDeny`` and ``TraceStep``. The SDK's decision extends ``Verdict``; the server's response models are
made from these (``aigos.server.policy.schemas``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal, TypedDict

#: The chain's stages, in order.
#: ``asset_card`` is the bounds an AIGRC asset card puts on the agent's capabilities: a simulation shows it
#: (the check applies it to the subject's capabilities before the capability stage).
Stage = Literal["kill_switch", "asset_card", "capability", "budget", "domain", "custom"]
#: The stages ``evaluate`` runs, in order.
STAGES: Final[tuple[Stage, ...]] = ("kill_switch", "capability", "budget", "domain", "custom")
#: What a stage did: let the request on, refused it, had nothing to decide, or left it to the caller.
StepResult = Literal["pass", "deny", "skip", "pending"]
CAPABILITY_BUDGET = "capability"


class Code(StrEnum):
    """Why a request was denied: the AIGRC runtime specification's codes."""

    TERMINATED = "TERMINATED"
    PAUSED = "PAUSED"
    CAPABILITY_DENIED = "CAPABILITY_DENIED"
    RESOURCE_DENIED = "RESOURCE_DENIED"
    RESOURCE_NOT_ALLOWED = "RESOURCE_NOT_ALLOWED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    CUSTOM_DENIED = "CUSTOM_DENIED"


# -- decisions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending limit that applies to a request: the agent's capability ceiling or a policy's budget."""

    id: str
    limit: float
    period: str = "lifetime"
    shared: bool = False
    policy_id: str | None = None
    enforce: bool = True
    #: How the budget is named to people (its policy's name).
    label: str | None = None

    def bucket(self, at: datetime) -> str:
        """Which period a spend at ``at`` counts in: ``all``, a day or a month (UTC)."""
        at = at.astimezone(UTC)
        if self.period == "daily":
            return at.strftime("%Y-%m-%d")
        if self.period == "monthly":
            return at.strftime("%Y-%m")
        return "all"

    def key(self, agent_id: str, at: datetime) -> str:
        """The counter this budget draws from (shared budgets draw from one counter for all agents)."""
        owner = "*" if self.shared else agent_id
        return f"{self.id}:{owner}:{self.bucket(at)}"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` checks per ``period_seconds`` (bursts up to ``limit``), per agent or shared."""

    id: str
    limit: int
    period_seconds: float
    shared: bool = False
    policy_id: str | None = None
    enforce: bool = True
    label: str | None = None

    def key(self, agent_id: str) -> str:
        """The limiter this rate limit counts on."""
        return f"{self.id}:{'*' if self.shared else agent_id}"

    @property
    def reason(self) -> str:
        """Why a request over this limit is refused."""
        name = self.label or self.policy_id
        return f"Policy {name!r} allows {self.limit} checks per {self.period_seconds:g} s."


@dataclass(frozen=True, slots=True)
class WouldDeny:
    """A denial a dry-run policy would have made."""

    policy_id: str
    rule: str | None
    code: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The API form."""
        return {"policy_id": self.policy_id, "rule": self.rule, "code": self.code, "reason": self.reason}


class _Step(TypedDict):
    stage: Stage
    result: StepResult


class TraceStep(_Step, total=False):
    """One stage of the evaluation chain (``detail`` may be left out)."""

    detail: str | None


@dataclass(slots=True)
class Verdict:
    """What a decision says, wherever it is shown: allowed, or the first denial and where it came from."""

    allowed: bool
    code: str | None = None
    stage: str | None = None
    reason: str | None = None
    matched_rule: str | None = None
    policy_id: str | None = None
    budget_remaining: float | None = None


#: ``Verdict``'s fields, in order.
VERDICT_FIELDS: Final = tuple(item.name for item in dataclasses.fields(Verdict))


@dataclass(slots=True)
class Decision(Verdict):
    """The answer to a check: the verdict, dry-run findings, the trace, and what the caller must count."""

    would_deny: tuple[WouldDeny, ...] = ()
    trace: tuple[TraceStep, ...] | None = None
    #: Budgets the caller must still reserve against, with their counter keys (set when evaluated without
    #: ``spent``; see ``needs_budget``).
    budgets: tuple[tuple[Budget, str], ...] = ()
    #: Rate limits the caller must still count against (only the server can: they are shared counters).
    rate_limits: tuple[tuple[RateLimit, str], ...] = ()
    cost: float = 0.0

    @property
    def needs_rate(self) -> bool:
        """Whether the verdict waits on rate limiters (allowed so far, or denied after the budget stage)."""
        return bool(self.rate_limits) and (self.allowed or self.stage in ("domain", "custom"))

    def with_rates(self, exceeded: Sequence[RateLimit]) -> Decision:
        """The decision once the rate limiters answered: ``exceeded`` are the limits that had no room.

        An enforced one turns the decision into ``RATE_LIMITED`` (its stage comes before the domain and
        custom stages); a dry-run one adds to ``would_deny``.
        """
        enforced = [limit for limit in exceeded if limit.enforce]
        shadows = tuple(
            WouldDeny(str(limit.policy_id), None, Code.RATE_LIMITED.value, limit.reason)
            for limit in exceeded
            if not limit.enforce
        )
        if enforced:
            trace = self.trace
            if trace is not None:
                trace = (*_before(trace, "budget"), trace_step("budget", "deny", enforced[0].reason))
            return Decision(
                allowed=False,
                code=Code.RATE_LIMITED.value,
                stage="budget",
                reason=enforced[0].reason,
                policy_id=enforced[0].policy_id,
                would_deny=shadows,
                trace=trace,
                cost=self.cost,
            )
        return dataclasses.replace(self, would_deny=shadows + self.would_deny, rate_limits=())

    @property
    def needs_budget(self) -> bool:
        """Whether the verdict waits on budget counters (allowed so far, or denied after the budget stage)."""
        return bool(self.budgets) and (self.allowed or self.stage in ("domain", "custom"))

    def with_spent(self, spent: Mapping[str, float]) -> Decision:
        """The final decision once the budgets' counters are known (``spent`` before this request's cost).

        An enforced budget without room turns the decision into ``BUDGET_EXCEEDED`` (the budget stage comes
        before the domain and custom stages); a dry-run one adds to ``would_deny``.
        """
        outcome = settle(self.budgets, spent, self.cost)
        # As if evaluated in order: budget findings first; past a budget denial, no later stage ran.
        would = outcome.would_deny if outcome.exceeded is not None else outcome.would_deny + self.would_deny
        trace = self.trace
        if outcome.exceeded is not None:
            reason = budget_reason(outcome.exceeded)
            if trace is not None:
                trace = (*_before(trace, "budget"), trace_step("budget", "deny", reason))
            return Decision(
                allowed=False,
                code=Code.BUDGET_EXCEEDED.value,
                stage="budget",
                reason=reason,
                policy_id=outcome.exceeded.policy_id,
                budget_remaining=outcome.remaining,
                would_deny=would,
                trace=trace,
                cost=self.cost,
            )
        if trace is not None:
            trace = tuple(
                trace_step("budget", "pass", f"remaining {outcome.remaining}")
                if step["stage"] == "budget"
                else step
                for step in trace
            )
        return dataclasses.replace(
            self, budget_remaining=outcome.remaining, would_deny=would, trace=trace, budgets=()
        )

    def to_json(self) -> dict[str, Any]:
        """The check API's response fields (without ``decision_id``, ``latency_ms`` and versions)."""
        return {
            "allowed": self.allowed,
            "code": self.code,
            "stage": self.stage,
            "reason": self.reason,
            "matched_rule": self.matched_rule,
            "policy_id": self.policy_id,
            "budget_remaining": self.budget_remaining,
            "would_deny": [item.to_json() for item in self.would_deny],
            "trace": list(self.trace) if self.trace is not None else None,
        }


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    """How a cost fits the budgets: the first enforced budget without room, dry-run overruns, room left."""

    exceeded: Budget | None
    would_deny: tuple[WouldDeny, ...]
    remaining: float | None


def settle(lines: Iterable[tuple[Budget, str]], spent: Mapping[str, float], cost: float) -> BudgetOutcome:
    """Whether ``cost`` fits each budget given what its counter (``spent[key]``) holds.

    ``remaining`` is the least room left among enforced budgets after this cost (before it, when it does
    not fit), so an agent sees what it can still spend.
    """
    exceeded: Budget | None = None
    would: list[WouldDeny] = []
    remaining: float | None = None
    for budget, key in lines:
        used = spent.get(key, 0.0)
        fits = used + cost <= budget.limit + 1e-9
        if not fits and budget.enforce and exceeded is None:
            exceeded = budget
        elif not fits and not budget.enforce:
            would.append(
                WouldDeny(str(budget.policy_id), None, Code.BUDGET_EXCEEDED.value, budget_reason(budget))
            )
        if budget.enforce:
            room = max(budget.limit - used - (cost if fits else 0.0), 0.0)
            remaining = room if remaining is None else min(remaining, room)
    return BudgetOutcome(exceeded, tuple(would), remaining)


def budget_reason(budget: Budget) -> str:
    """Why a cost over ``budget`` is refused."""
    where = "the agent's capability budget"
    if budget.id != CAPABILITY_BUDGET:
        where = f"the budget of policy {budget.label or budget.policy_id!r}"
    return f"The estimated cost exceeds {where} ({budget.limit:g}, {budget.period})."


def trace_step(stage: Stage, result: StepResult, detail: str | None = None) -> TraceStep:
    """One stage's line in a decision's trace."""
    return {"stage": stage, "result": result, "detail": detail}


def _before(trace: Iterable[TraceStep], stage: Stage) -> tuple[TraceStep, ...]:
    order = STAGES.index(stage)
    return tuple(step for step in trace if STAGES.index(step["stage"]) < order)
