"""``evaluate``: the seed's chain, short-circuiting at the first denial, over an agent's selection.

It is the product's hot path and stays one function: no closures, no keyword calls, nothing allocated that
a check does not keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from aigos.core.policy.compiled import ALLOW, ALLOW_DRY_RUN, DENY, CompiledRule
from aigos.core.policy.decision import (
    CAPABILITY_BUDGET,
    Budget,
    Code,
    Decision,
    RateLimit,
    Stage,
    TraceStep,
    WouldDeny,
    budget_reason,
    settle,
    trace_step,
)
from aigos.core.policy.policyset import PolicySet
from aigos.core.policy.request import Request, Subject
from aigos.core.policy.selection import Effective


def evaluate(
    policies: PolicySet | Effective,
    subject: Subject,
    request: Request,
    *,
    spent: Mapping[str, float] | None = None,
    trace: bool = False,
) -> Decision:
    """Decide ``request`` for ``subject`` under ``policies``.

    With ``spent`` (counter key -> amount spent), budgets are decided here; without it, the decision lists
    the budgets still to reserve (``needs_budget``); the caller reserves them and finishes the decision
    with ``Decision.with_spent``.
    """
    # The hot path of the product: no closures, no keyword calls, nothing allocated a check does not keep.
    at = request.at
    effective = policies.effective(subject) if isinstance(policies, PolicySet) else policies
    steps: list[TraceStep] | None = [] if trace else None
    cost = request.estimated_cost

    # 1. kill switch
    status = subject.status
    if status != "active":
        if status == "paused":
            reason = "The agent is paused (AGENT_PAUSED) until it is resumed."
            return _denial(steps, "kill_switch", Code.PAUSED, reason, None, None, (), (), (), cost)
        reason = "The agent was terminated." if status == "terminated" else f"The agent is {status}."
        return _denial(steps, "kill_switch", Code.TERMINATED, reason, None, None, (), (), (), cost)
    if steps is not None:
        steps.append(trace_step("kill_switch", "pass"))

    # 2. capability
    tool = request.tool.lower() if request.tool else None
    domain = request.domain
    if tool is not None and not subject.tool_matcher(tool):
        reason = f"Tool {request.tool!r} is not in the agent's capabilities."
        return _denial(steps, "capability", Code.CAPABILITY_DENIED, reason, None, None, (), (), (), cost)
    if domain is not None and not subject.domain_matcher(domain):
        reason = f"Domain {domain!r} is not in the agent's capabilities."
        return _denial(steps, "capability", Code.CAPABILITY_DENIED, reason, None, None, (), (), (), cost)
    if steps is not None:
        steps.append(trace_step("capability", "pass"))

    # 3. budget and rate: rate limits are counted by the caller (shared counters), budgets here or there
    would: tuple[WouldDeny, ...] = ()
    budgets: tuple[tuple[Budget, str], ...] = ()
    rates: tuple[tuple[RateLimit, str], ...] = ()
    if effective.rate_limits:
        rates = tuple((limit, limit.key(subject.agent_id)) for limit in effective.rate_limits)
    applicable = effective.budgets
    if subject.max_budget is not None:
        applicable = (Budget(CAPABILITY_BUDGET, subject.max_budget), *applicable)
    remaining: float | None = None
    if applicable:
        at = at or datetime.now(UTC)  # budgets count by period: the time is needed now, and only now
        budgets = tuple((budget, budget.key(subject.agent_id, at)) for budget in applicable)
    if budgets and spent is not None:
        outcome = settle(budgets, spent, cost)
        would = outcome.would_deny
        remaining = outcome.remaining
        if outcome.exceeded is not None:
            exceeded = outcome.exceeded
            denied = _denial(
                steps, "budget", Code.BUDGET_EXCEEDED, budget_reason(exceeded), None, exceeded.policy_id,
                would, (), (), cost,
            )  # fmt: skip
            denied.budget_remaining = remaining
            return denied
        budgets = ()
        if steps is not None:
            steps.append(trace_step("budget", "pass", f"remaining {remaining}"))
    elif steps is not None:
        steps.append(trace_step("budget", "pending" if budgets else "skip"))

    # 4. domain patterns
    if domain is not None:
        for policy in effective.domain_rules:
            if policy.domain_deny is not None and policy.domain_deny(domain):
                code, reason = Code.RESOURCE_DENIED, f"Domain {domain!r} is denied by policy {policy.name!r}."
            elif policy.domain_allow is not None and not policy.domain_allow(domain):
                code = Code.RESOURCE_NOT_ALLOWED
                reason = f"Domain {domain!r} is not allowed by policy {policy.name!r}."
            else:
                continue
            if policy.enforce:
                denied = _denial(steps, "domain", code, reason, None, policy.id, would, budgets, rates, cost)
                return _finish(denied, remaining)
            would += (WouldDeny(policy.id, None, code.value, reason),)
    if steps is not None:
        steps.append(trace_step("domain", "pass" if domain is not None else "skip"))

    # 5. custom rules. Once an enforced allow rule matched, only a deny rule can change the verdict (deny
    # overrides) and the reported rule is known: the other allow rules are passed over untested.
    resource = request.resource.lower()
    allowed_by: CompiledRule | None = None
    #: Whether any allow rule matched, dry-run ones included: a dry-run default deny asks as if enforced.
    any_allow = False
    # Tests inlined (resource, then conditions): this loop is the hot path.
    for rule, prefixes, matches, holds, kind in effective.candidates(request.action.lower(), tool):
        if allowed_by is not None and kind != DENY:
            continue
        if prefixes is not None:
            if not resource.startswith(prefixes):
                continue
        elif matches is not None and not matches(resource):
            continue
        if holds is not None and not holds(subject, request, at):
            continue
        if kind == ALLOW:
            allowed_by, any_allow = rule, True
        elif kind == ALLOW_DRY_RUN:
            any_allow = True
        else:
            reason = rule.description or f"Denied by rule {rule.id!r}."
            if rule.enforce:
                denied = _denial(
                    steps,
                    "custom",
                    Code.CUSTOM_DENIED,
                    reason,
                    rule.id,
                    rule.policy_id,
                    would,
                    budgets,
                    rates,
                    cost,
                )
                return _finish(denied, remaining)
            would += (WouldDeny(rule.policy_id, rule.id, Code.CUSTOM_DENIED.value, reason),)
    if allowed_by is None:
        for policy in effective.default_deny:
            if any_allow and not policy.enforce:
                continue
            reason = (
                f"No rule allows {request.action!r} on {request.resource!r}"
                f" (policy {policy.name!r} denies by default)."
            )
            if policy.enforce:
                denied = _denial(
                    steps, "custom", Code.CUSTOM_DENIED, reason, None, policy.id, would, budgets, rates, cost
                )
                return _finish(denied, remaining)
            would += (WouldDeny(policy.id, None, Code.CUSTOM_DENIED.value, reason),)
    if steps is not None:
        detail = f"allowed by rule {allowed_by.id!r}" if allowed_by else "no rule denies"
        steps.append(trace_step("custom", "pass", detail))
    return Decision(  # positional, in field order: keyword arguments cost more than the walk here
        True,  # allowed
        None,  # code
        None,  # stage
        None,  # reason
        allowed_by.id if allowed_by else None,
        allowed_by.policy_id if allowed_by else None,
        remaining,
        would,
        tuple(steps) if steps is not None else None,
        budgets,
        rates,
        cost,
    )


def _denial(
    steps: list[TraceStep] | None,
    stage: Stage,
    code: Code,
    reason: str,
    rule: str | None,
    policy: str | None,
    would: tuple[WouldDeny, ...],
    budgets: tuple[tuple[Budget, str], ...],
    rates: tuple[tuple[RateLimit, str], ...],
    cost: float,
) -> Decision:
    """A denial at ``stage``; budgets and rate limits still to count only go with a later stage's denial."""
    if steps is not None:
        steps.append(trace_step(stage, "deny", reason))
    return Decision(  # positional, as in ``evaluate``
        False,  # allowed
        code.value,
        stage,
        reason,
        rule,  # matched_rule
        policy,  # policy_id
        None,  # budget_remaining
        would,
        tuple(steps) if steps is not None else None,
        budgets,
        rates,
        cost,
    )


def _finish(decision: Decision, remaining: float | None) -> Decision:
    if remaining is not None:
        decision.budget_remaining = remaining
    return decision
