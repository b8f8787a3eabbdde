"""The policy model and its evaluator: pure, shared by the server's hot path, simulation and the SDK.

A tenant's policies are compiled once into a ``PolicySet``; for each agent the policies that target it are
selected once into an ``Effective`` set (cached), and for each (action, tool) it asks about, the rules that
may match (cached); a check is then a handful of dictionary look-ups and pre-compiled pattern matches, and
once an enforced allow rule matched only the deny rules after it are still tried. The chain is the seed's,
short-circuiting at the first denial:

1. ``kill_switch`` — a paused or terminated agent is denied (``PAUSED``, ``TERMINATED``).
2. ``capability`` — the tool and domain must be within the agent's capabilities (``CAPABILITY_DENIED``).
3. ``budget`` — the request must fit every rate limit (``RATE_LIMITED``) and its estimated cost every
   budget (``BUDGET_EXCEEDED``) that applies.
4. ``domain`` — the tenant's domain patterns: a deny match refuses (``RESOURCE_DENIED``); a policy with an
   allow list refuses domains outside it (``RESOURCE_NOT_ALLOWED``).
5. ``custom`` — rules on action, resource, tool, domain, cost, time window, agent attributes and context.

**Precedence** (one rule everywhere): policies apply from the tenant, to agents selected by attributes, to
one agent, and within them to actions; a matching *deny* anywhere overrides any *allow*. Priority (higher
first) only decides which rule is reported and the order rules are tried in. A policy whose
``default_effect`` is ``deny`` refuses requests no rule of the agent's policies allows.

**Dry run**: a policy in ``dry_run`` mode never denies; what it would have denied is reported in
``would_deny``, so a rule can be watched on live traffic before it is enforced.

Budgets: the evaluator decides which budgets apply; whether they have room is either computed here from a
``spent`` mapping (simulation, the SDK) or left to the caller, which reserves atomically across processes
(the server) and then calls ``Decision.with_spent``.

The package, one module per idea: ``request`` (what is asked, who asks), ``document`` (the policy
document's vocabulary, limits and checks), ``decision`` (the answer and budgets), ``steps`` (long work
in pauses), ``compiled`` (one document compiled), ``selection`` (an agent's share of a set),
``policyset`` (a tenant's set), ``evaluate`` (the chain) and ``bundle`` (signed bundles). Import the
names from here.
"""

from __future__ import annotations

from aigos.core.canonical import canonical
from aigos.core.policy.bundle import (
    Bundle,
    Pieces,
    bundle_content,
    bundle_payload,
    canonical_object,
    signed_payload,
)
from aigos.core.policy.compiled import compile_policy, compiling
from aigos.core.policy.decision import (
    CAPABILITY_BUDGET,
    STAGES,
    VERDICT_FIELDS,
    Budget,
    BudgetOutcome,
    Code,
    Decision,
    RateLimit,
    Stage,
    StepResult,
    TraceStep,
    Verdict,
    WouldDeny,
    settle,
)
from aigos.core.policy.document import (
    DAYS,
    HHMM,
    MAX_CONDITION_PATTERNS,
    MAX_DESCRIPTION,
    MAX_DOMAIN_PATTERNS,
    MAX_NAME,
    MAX_PATTERN,
    MAX_PRIORITY,
    MAX_RATE_REQUESTS,
    MAX_RATE_SECONDS,
    MAX_RULE_DESCRIPTION,
    MAX_RULE_PATTERNS,
    MAX_RULES,
    MAX_SELECTOR_ENVS,
    MAX_SELECTOR_VALUES,
    MIN_RATE_REQUESTS,
    PERIODS,
    RULE_ID,
    SCOPES,
    Day,
    Effect,
    Mode,
    Period,
    PolicyError,
    Scope,
    TargetKind,
    hhmm_error,
    span_error,
    validate,
    validating,
    zone_error,
)
from aigos.core.policy.evaluate import evaluate
from aigos.core.policy.policyset import PolicySet
from aigos.core.policy.request import Request, Subject, labels_of
from aigos.core.policy.selection import (
    EAGER_TESTS,
    MAX_CANDIDATE_SETS,
    RESOURCE_CHARS_PER_UNIT,
    Effective,
    narrowing,
)
from aigos.core.policy.steps import (
    BYTES_PER_STEP,
    ITEMS_PER_STEP,
    PATTERNS_PER_STEP,
    RULES_PER_STEP,
    Pace,
    Steps,
    finish,
)

__all__ = [
    "BYTES_PER_STEP",
    "CAPABILITY_BUDGET",
    "DAYS",
    "EAGER_TESTS",
    "HHMM",
    "ITEMS_PER_STEP",
    "MAX_CANDIDATE_SETS",
    "MAX_CONDITION_PATTERNS",
    "MAX_DESCRIPTION",
    "MAX_DOMAIN_PATTERNS",
    "MAX_NAME",
    "MAX_PATTERN",
    "MAX_PRIORITY",
    "MAX_RATE_REQUESTS",
    "MAX_RATE_SECONDS",
    "MAX_RULES",
    "MAX_RULE_DESCRIPTION",
    "MAX_RULE_PATTERNS",
    "MAX_SELECTOR_ENVS",
    "MAX_SELECTOR_VALUES",
    "MIN_RATE_REQUESTS",
    "PATTERNS_PER_STEP",
    "PERIODS",
    "RESOURCE_CHARS_PER_UNIT",
    "RULES_PER_STEP",
    "RULE_ID",
    "SCOPES",
    "STAGES",
    "VERDICT_FIELDS",
    "Budget",
    "BudgetOutcome",
    "Bundle",
    "Code",
    "Day",
    "Decision",
    "Effect",
    "Effective",
    "Mode",
    "Pace",
    "Period",
    "Pieces",
    "PolicyError",
    "PolicySet",
    "RateLimit",
    "Request",
    "Scope",
    "Stage",
    "StepResult",
    "Steps",
    "Subject",
    "TargetKind",
    "TraceStep",
    "Verdict",
    "WouldDeny",
    "bundle_content",
    "bundle_payload",
    "canonical",
    "canonical_object",
    "compile_policy",
    "compiling",
    "evaluate",
    "finish",
    "hhmm_error",
    "labels_of",
    "narrowing",
    "settle",
    "signed_payload",
    "span_error",
    "validate",
    "validating",
    "zone_error",
]
