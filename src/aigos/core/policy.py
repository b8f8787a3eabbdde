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
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as clock
from enum import StrEnum
from typing import Any, Literal, NamedTuple, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aigos.core import globs
from aigos.core.canonical import canonical

STAGES = ("kill_switch", "capability", "budget", "domain", "custom")
PERIODS = ("lifetime", "daily", "monthly")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CAPABILITY_BUDGET = "capability"
#: Per agent: how many (action, tool) pairs keep their candidate rules cached.
MAX_CANDIDATE_SETS = 512
#: Per agent selection: at most this many pattern tests to work out every exact action's rules in advance.
EAGER_TESTS = 20_000
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


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


# -- the request and its subject ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """What an agent asks to do."""

    action: str
    resource: str
    tool: str | None = None
    domain: str | None = None
    estimated_cost: float = 0.0
    context: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | None = None

    @classmethod
    def of(
        cls,
        action: str,
        resource: str,
        context: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> Request:
        """A request in the check API's shape: ``tool``, ``domain``, ``estimated_cost`` in ``context``."""
        ctx = dict(context or {})
        tool, domain, cost = ctx.get("tool"), ctx.get("domain"), ctx.get("estimated_cost")
        return cls(
            action=action,
            resource=resource,
            tool=str(tool) if tool is not None else None,
            domain=globs.normalize_domain(str(domain)) if domain else None,
            estimated_cost=float(cost) if cost is not None else 0.0,
            context=ctx,
            at=at,
        )


@dataclass(frozen=True, slots=True)
class Subject:
    """The agent a request comes from: status, capabilities (from its token), attributes (for targeting)."""

    agent_id: str
    status: str = "active"
    tools: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    max_budget: float | None = None
    agent_type: str | None = None
    owner: str | None = None
    deployment_env: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    #: What targeting depends on: the key of the per-agent policy selection.
    target_key: tuple[Any, ...] = field(default=(), compare=False)
    #: The capabilities compiled (set when the subject is made).
    tool_matcher: globs.Matcher = field(default=globs.nothing, compare=False, repr=False)
    domain_matcher: globs.Matcher = field(default=globs.nothing, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_matcher", globs.names(self.tools))
        object.__setattr__(self, "domain_matcher", globs.domains(self.domains))
        key = (
            self.agent_id,
            self.agent_type,
            self.owner,
            self.deployment_env,
            tuple(sorted(self.labels.items())),
        )
        object.__setattr__(self, "target_key", key)

    @classmethod
    def of(
        cls,
        agent_id: str,
        *,
        status: str = "active",
        capabilities: Mapping[str, Any] | None = None,
        agent_type: str | None = None,
        owner: str | None = None,
        deployment_env: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Subject:
        """A subject from an agent's record or token claims; labels come from its metadata."""
        caps = capabilities or {}
        budget = caps.get("max_budget")
        return cls(
            agent_id=agent_id,
            status=status,
            tools=tuple(str(tool) for tool in caps.get("tools") or ()),
            domains=tuple(str(domain) for domain in caps.get("domains") or ()),
            max_budget=float(budget) if budget is not None else None,
            agent_type=agent_type,
            owner=owner,
            deployment_env=deployment_env,
            labels=labels_of(metadata or {}),
        )

    def with_status(self, status: str) -> Subject:
        """The same subject in another status."""
        return dataclasses.replace(self, status=status)

    def to_json(self) -> dict[str, Any]:
        """The subject as JSON (in a signed bundle)."""
        return {
            "agent_id": self.agent_id,
            "status": self.status,
            "capabilities": {
                "tools": list(self.tools),
                "domains": list(self.domains),
                "max_budget": self.max_budget,
            },
            "agent_type": self.agent_type,
            "owner": self.owner,
            "deployment_env": self.deployment_env,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Subject:
        """The inverse of ``to_json``."""
        return cls.of(
            str(data["agent_id"]),
            status=str(data.get("status", "active")),
            capabilities=data.get("capabilities") or {},
            agent_type=data.get("agent_type"),
            owner=data.get("owner"),
            deployment_env=data.get("deployment_env"),
            metadata={"labels": data.get("labels") or {}},
        )


def labels_of(metadata: Mapping[str, Any]) -> dict[str, str]:
    """An agent's labels: its metadata's string values, and the entries of ``metadata.labels``."""
    found = {key: value for key, value in metadata.items() if isinstance(value, str)}
    nested = metadata.get("labels")
    if isinstance(nested, Mapping):
        found.update({str(key): str(value) for key, value in nested.items()})
    return found


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


@dataclass(slots=True)
class Decision:
    """The answer to a check: allowed or the first denial, with where it came from."""

    allowed: bool
    code: str | None = None
    stage: str | None = None
    reason: str | None = None
    matched_rule: str | None = None
    policy_id: str | None = None
    budget_remaining: float | None = None
    would_deny: tuple[WouldDeny, ...] = ()
    trace: tuple[dict[str, Any], ...] | None = None
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
                trace = (*_before(trace, "budget"), _step("budget", "deny", enforced[0].reason))
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
            reason = _budget_reason(outcome.exceeded)
            if trace is not None:
                trace = (*_before(trace, "budget"), _step("budget", "deny", reason))
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
                _step("budget", "pass", f"remaining {outcome.remaining}")
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
                WouldDeny(str(budget.policy_id), None, Code.BUDGET_EXCEEDED.value, _budget_reason(budget))
            )
        if budget.enforce:
            room = max(budget.limit - used - (cost if fits else 0.0), 0.0)
            remaining = room if remaining is None else min(remaining, room)
    return BudgetOutcome(exceeded, tuple(would), remaining)


def _budget_reason(budget: Budget) -> str:
    where = "the agent's capability budget"
    if budget.id != CAPABILITY_BUDGET:
        where = f"the budget of policy {budget.label or budget.policy_id!r}"
    return f"The estimated cost exceeds {where} ({budget.limit:g}, {budget.period})."


def _step(stage: str, result: str, detail: str | None = None) -> dict[str, Any]:
    return {"stage": stage, "result": result, "detail": detail}


def _before(trace: Iterable[dict[str, Any]], stage: str) -> tuple[dict[str, Any], ...]:
    order = STAGES.index(stage)
    return tuple(step for step in trace if STAGES.index(step["stage"]) < order)


# -- work in steps ----------------------------------------------------------------------------------

_T = TypeVar("_T")
#: A computation in steps: a generator that pauses (yields ``None``) every few milliseconds of work and
#: returns its result. ``finish`` runs one at once; the server runs one on its event loop and lets other
#: requests in at each pause, so that the largest policy set a plan allows holds up no other request.
Steps = Generator[None, None, _T]

#: Rules, or patterns, handled between two pauses of a computation in steps (a few milliseconds of work).
RULES_PER_STEP = 50
PATTERNS_PER_STEP = 500
#: Cheap items (rules placed or indexed, selections filtered) handled between two pauses.
ITEMS_PER_STEP = 1_000
#: Bytes of JSON encoded between two pauses.
BYTES_PER_STEP = 1 << 20


class Pace:
    """When a computation in steps pauses: after ``RULES_PER_STEP`` rules or ``PATTERNS_PER_STEP``
    patterns since its last pause, whichever comes first (a rule may hold hundreds of patterns)."""

    __slots__ = ("_patterns", "_rules")

    def __init__(self) -> None:
        self._rules = self._patterns = 0

    def due(self, patterns: int, rules: int = 1) -> bool:
        """Count one more rule with ``patterns`` patterns; whether it is time to pause."""
        self._rules += rules
        self._patterns += patterns
        if self._rules >= RULES_PER_STEP or self._patterns >= PATTERNS_PER_STEP:
            self._rules = self._patterns = 0
            return True
        return False


def finish(steps: Steps[_T]) -> _T:
    """The result of a computation in steps, run at once (off an event loop, or where it is small)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: _T = done.value
            return result


# -- the policy document -----------------------------------------------------------------------------


class PolicyError(ValueError):
    """A policy document is invalid; ``errors`` are (JSON pointer, detail) pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{pointer}: {detail}" for pointer, detail in errors))
        self.errors = errors


_Check = Callable[[object], str | None]


def validate(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every pattern, window and budget error in a policy document, as (JSON pointer, detail) pairs.

    Shapes and types are checked by the API schema; this checks what only the evaluator knows: that each
    pattern compiles to what it looks like, that time zones exist, that windows are well formed.
    """
    return finish(validating(document))


def validating(document: Mapping[str, Any]) -> Steps[list[tuple[str, str]]]:
    """``validate`` in steps (see ``Pace``): a document may hold tens of thousands of patterns."""
    errors: list[tuple[str, str]] = []
    pace = Pace()

    def patterns(base: str, name: str, values: Sequence[object] | None, check: _Check) -> int:
        # Pointers are only spelled out for an error: most documents have none.
        for index, value in enumerate(values or ()):
            problem = check(value)
            if problem:
                errors.append((f"{base}{name}/{index}", problem))
        return len(values or ())

    domain_lists = document.get("domains") or {}
    patterns("", "/domains/allow", domain_lists.get("allow"), globs.domain_glob_error)
    patterns("", "/domains/deny", domain_lists.get("deny"), globs.domain_glob_error)
    budget = document.get("budget")
    if budget:
        errors += _budget_errors(budget)
    rate = document.get("rate_limit")
    if rate:
        errors += _rate_errors(rate)
    seen: set[str] = set()
    for index, rule in enumerate(document.get("rules") or ()):
        base = f"/rules/{index}"
        # Ids left out are filled in as rule-N: those count too, or two rules could share one.
        rule_id = str(rule.get("id") or f"rule-{index + 1}")
        if rule_id in seen:
            errors.append((f"{base}/id", f"duplicate rule id {rule_id!r}"))
        seen.add(rule_id)
        count = patterns(base, "/actions", rule.get("actions"), globs.name_glob_error)
        count += patterns(base, "/resources", rule.get("resources"), globs.name_glob_error)
        conditions = rule.get("conditions")
        if conditions:
            count += patterns(base, "/conditions/tools", conditions.get("tools"), globs.name_glob_error)
            domains = conditions.get("domains")
            count += patterns(base, "/conditions/domains", domains, globs.domain_glob_error)
            window = conditions.get("time")
            if window:
                errors += _window_errors(f"{base}/conditions/time", window)
        if pace.due(count):
            yield
    return errors


def _rate_errors(rate: Mapping[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    requests, period = rate.get("requests"), rate.get("per_seconds")
    if not isinstance(requests, int) or isinstance(requests, bool) or not 1 <= requests <= 1_000_000:
        errors.append(("/rate_limit/requests", "must be a whole number from 1 to 1,000,000"))
    if not isinstance(period, int | float) or isinstance(period, bool) or not 0 < period <= 86_400:
        errors.append(("/rate_limit/per_seconds", "must be more than 0 and at most 86400"))
    if rate.get("scope", "agent") not in ("agent", "shared"):
        errors.append(("/rate_limit/scope", "must be agent or shared"))
    return errors


def _budget_errors(budget: Mapping[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    limit = budget.get("limit")
    if not isinstance(limit, int | float) or isinstance(limit, bool) or not 0 <= limit < float("inf"):
        errors.append(("/budget/limit", "must be a number >= 0"))
    if budget.get("period", "lifetime") not in PERIODS:
        errors.append(("/budget/period", f"must be one of {', '.join(PERIODS)}"))
    if budget.get("scope", "agent") not in ("agent", "shared"):
        errors.append(("/budget/scope", "must be agent or shared"))
    return errors


def _window_errors(pointer: str, window: Mapping[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    start, end = window.get("start"), window.get("end")
    if (start is None) != (end is None):
        errors.append((f"{pointer}/{'end' if end is None else 'start'}", "start and end go together"))
    elif start is not None and start == end:
        errors.append((f"{pointer}/end", "must differ from start (leave both out for the whole day)"))
    for index, day in enumerate(window.get("days") or []):
        if day not in DAYS:
            errors.append((f"{pointer}/days/{index}", f"must be one of {', '.join(DAYS)}"))
    for name in ("start", "end"):
        value = window.get(name)
        if value is not None and not _HHMM.match(str(value)):
            errors.append((f"{pointer}/{name}", "must be HH:MM (24-hour clock)"))
    tz = window.get("timezone") or "UTC"
    try:
        _zone(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        errors.append((f"{pointer}/timezone", f"unknown time zone {tz!r}"))
    return errors


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# -- compiled form -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Window:
    days: frozenset[int] | None
    start: clock | None
    end: clock | None
    zone: ZoneInfo

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        day = local.weekday()
        if self.start is not None and self.end is not None:
            now = local.time().replace(tzinfo=None)
            if self.start <= self.end:
                if not self.start <= now < self.end:
                    return False
            elif now < self.end:
                day = (day - 1) % 7  # after midnight in a window that began the day before
            elif now < self.start:
                return False
        return self.days is None or day in self.days


def _window(spec: Mapping[str, Any]) -> _Window:
    days = spec.get("days")

    def hhmm(value: object) -> clock | None:
        return clock.fromisoformat(str(value)) if value else None

    return _Window(
        days=frozenset(DAYS.index(day) for day in days) if days else None,
        start=hhmm(spec.get("start")),
        end=hhmm(spec.get("end")),
        zone=_zone(str(spec.get("timezone") or "UTC")),
    )


@dataclass(frozen=True, slots=True)
class _Selector:
    """Agent attributes a policy or rule applies to; an empty selector selects every agent."""

    agent_types: frozenset[str] | None = None
    owners: frozenset[str] | None = None
    envs: frozenset[str] | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def selects(self, subject: Subject) -> bool:
        return (
            (self.agent_types is None or subject.agent_type in self.agent_types)
            and (self.owners is None or subject.owner in self.owners)
            and (self.envs is None or subject.deployment_env in self.envs)
            and all(subject.labels.get(key) == value for key, value in self.labels)
        )


def _selector(spec: Mapping[str, Any] | None) -> _Selector:
    if not spec:
        return _Selector()

    def values(name: str) -> frozenset[str] | None:
        given = spec.get(name)
        if given is None:
            return None
        return frozenset([given] if isinstance(given, str) else (str(item) for item in given))

    return _Selector(
        agent_types=values("agent_type"),
        owners=values("owner"),
        envs=values("deployment_env"),
        labels=tuple(sorted((str(k), str(v)) for k, v in (spec.get("labels") or {}).items())),
    )


#: A rule's conditions beyond resource and tool, compiled into one call (see ``_conditions``).
_Conditions = Callable[[Subject, Request, datetime | None], bool]


class _Rule(NamedTuple):
    """A compiled rule (a named tuple: made for every rule of every compile, at a third of the cost of a
    frozen dataclass)."""

    id: str
    policy_id: str
    effect: Literal["allow", "deny"]
    enforce: bool
    order: tuple[int, int, int]
    #: None when the rule applies to every resource (the common case: no call at all).
    resource: globs.Matcher | None
    #: The resource patterns' literal prefixes when each is ``prefix*`` (see ``globs.prefixes``).
    resource_prefixes: tuple[str, ...] | None
    tool: globs.Matcher | None
    #: None when no condition beyond resource and tool is set, so most rules stop after two tests.
    conditions: _Conditions | None
    description: str | None
    #: The resource patterns a test of the resource may try (0 when every resource, or prefixes only,
    #: which cost one C call): what testing this rule's resource costs, at most (see ``narrowing``).
    resource_weight: int


def _conditions(spec: Mapping[str, Any]) -> _Conditions | None:
    """A rule's domain, cost, time, agent and context conditions as one call that tests only those set.

    Each condition becomes a closure over its compiled operand; several are chained without a generator
    (``all(...)`` over a generator costs more than the tests it runs).
    """
    tests: list[_Conditions] = []
    if spec.get("domains"):
        domain_match = globs.domains(spec["domains"])
        tests.append(lambda s, r, at: r.domain is not None and domain_match(r.domain))
    cost = spec.get("cost") or {}
    for op in ("gt", "gte", "lt", "lte"):
        if cost.get(op) is not None:
            tests.append(_COST_TESTS[op](float(cost[op])))
    if spec.get("time"):
        window = _window(spec["time"])
        tests.append(lambda s, r, at: window.contains(at or datetime.now(UTC)))
    if spec.get("agent"):
        selector = _selector(spec["agent"])
        tests.append(lambda s, r, at: selector.selects(s))
    for key, value in sorted((spec.get("context") or {}).items()):
        allowed = frozenset([value] if isinstance(value, str) else (str(v) for v in value))
        tests.append(_context_test(str(key), allowed))
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda s, r, at: first(s, r, at) and second(s, r, at)
    chain = tuple(tests)

    def every(subject: Subject, request: Request, at: datetime | None) -> bool:
        for test in chain:  # noqa: SIM110 - not all(generator): see above
            if not test(subject, request, at):
                return False
        return True

    return every


def _context_test(key: str, allowed: frozenset[str]) -> _Conditions:
    def test(subject: Subject, request: Request, at: datetime | None) -> bool:
        value = request.context.get(key)
        return (value if type(value) is str else _text(value)) in allowed

    return test


def _text(value: object) -> str | None:
    """A context value as a condition compares it: JSON's spelling of booleans; nothing for a missing key."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_COST_TESTS: dict[str, Callable[[float], _Conditions]] = {
    "gt": lambda bound: lambda s, r, at: r.estimated_cost > bound,
    "gte": lambda bound: lambda s, r, at: r.estimated_cost >= bound,
    "lt": lambda bound: lambda s, r, at: r.estimated_cost < bound,
    "lte": lambda bound: lambda s, r, at: r.estimated_cost <= bound,
}


#: How the custom stage reads a rule: the rule, its resource prefixes (when every resource pattern is
#: ``prefix*``, tested inline) or else its resource matcher, its conditions, and its kind. A plain tuple,
#: made once when the policy is compiled and shared by every agent's candidate lists (a tenant-wide rule
#: is one object in memory, warm in the CPU's caches); the walk unpacks it without attribute look-ups.
_Entry = tuple[_Rule, tuple[str, ...] | None, globs.Matcher | None, _Conditions | None, int]
#: ``_Entry`` kinds.
_DENY, _ALLOW, _ALLOW_DRY_RUN = 0, 1, 2


# Rules of a tenant often repeat the same resource and tool lists: compile each list once.
@functools.lru_cache(maxsize=4096)
def _names(patterns: tuple[str, ...]) -> globs.Matcher:
    return globs.names(patterns)


@functools.lru_cache(maxsize=4096)
def _resource_matcher(patterns: tuple[str, ...]) -> tuple[globs.Matcher | None, tuple[str, ...] | None]:
    """A rule's resource matcher and literal prefixes (see ``_Rule``); both None for every resource."""
    if "*" in patterns:
        return None, None
    return globs.names(patterns), globs.prefixes(patterns)


#: A rule as its policy holds it: its action patterns (lower-cased, each once), a matcher of them when one
#: has a wildcard (else ``None``: exact names, indexed by name), and the entry the custom stage reads.
_Indexed = tuple[tuple[str, ...], globs.Matcher | None, _Entry]


@dataclass(frozen=True, slots=True)
class _Policy:
    id: str
    name: str
    priority: int
    enforce: bool
    default_deny: bool
    target: str
    target_agent: str | None
    selector: _Selector
    domain_deny: globs.Matcher | None
    domain_allow: globs.Matcher | None
    budget: Budget | None
    rate_limit: RateLimit | None
    #: The rules in document order (see ``_Indexed``).
    rules: tuple[_Indexed, ...]
    document: Mapping[str, Any]

    def applies_to(self, subject: Subject) -> bool:
        if self.target == "agent":
            return self.target_agent == subject.agent_id
        if self.target == "selector":
            return self.selector.selects(subject)
        return True


def compile_policy(document: Mapping[str, Any]) -> _Policy:
    """The compiled form of one (validated) policy document."""
    return finish(compiling(document))


def compiling(document: Mapping[str, Any]) -> Steps[_Policy]:
    """``compile_policy`` in steps (see ``Pace``), validation included, so that a caller on an event loop
    can let other work in between (see the server's ``compile_in_pieces``)."""
    errors = yield from validating(document)
    if errors:
        raise PolicyError(errors)
    policy_id = str(document["id"])
    enforce = document.get("mode", "enforce") != "dry_run"
    priority = int(document.get("priority") or 0)
    target = document.get("target") or {"kind": "tenant"}
    domain_lists = document.get("domains") or {}
    budget_spec = document.get("budget")
    budget = None
    if budget_spec:
        budget = Budget(
            id=f"policy:{policy_id}",
            limit=float(budget_spec["limit"]),
            period=str(budget_spec.get("period") or "lifetime"),
            shared=budget_spec.get("scope") == "shared",
            policy_id=policy_id,
            enforce=enforce,
            label=str(document.get("name") or policy_id),
        )
    rate_spec = document.get("rate_limit")
    rate_limit = None
    if rate_spec:
        rate_limit = RateLimit(
            id=f"policy:{policy_id}",
            limit=int(rate_spec["requests"]),
            period_seconds=float(rate_spec["per_seconds"]),
            shared=rate_spec.get("scope") == "shared",
            policy_id=policy_id,
            enforce=enforce,
            label=str(document.get("name") or policy_id),
        )
    rules: list[_Indexed] = []
    patterns = 0
    for index, spec in enumerate(document.get("rules") or ()):
        # The hot loop of a compile (once per rule of every policy): no generators, no keyword calls.
        conditions = spec.get("conditions") or {}
        resources = tuple(spec.get("resources") or ("*",))
        tools = tuple(conditions["tools"]) if conditions.get("tools") else ()
        matcher, prefixes = _resource_matcher(resources)
        effect: Literal["allow", "deny"] = "deny" if spec.get("effect") == "deny" else "allow"
        rule = _Rule(
            str(spec.get("id") or f"rule-{index + 1}"),
            policy_id,
            effect,
            enforce,
            (-int(spec.get("priority") or 0), -priority, index),
            matcher,
            prefixes,
            _names(tools) if tools else None,
            _conditions(conditions) if conditions else None,
            spec.get("description"),
            len(resources) if matcher is not None and prefixes is None else 0,
        )
        kind = _DENY if effect == "deny" else _ALLOW if enforce else _ALLOW_DRY_RUN
        entry = (rule, prefixes, None if prefixes else matcher, rule.conditions, kind)
        actions = tuple(dict.fromkeys([str(action).lower() for action in spec.get("actions") or ("*",)]))
        # Indexed once here, not in each agent's selection: exact names, or one matcher of the patterns.
        glob = "*" in actions[0] or "?" in actions[0] if len(actions) == 1 else any(map(_is_glob, actions))
        rules.append((actions, _names(actions) if glob else None, entry))
        patterns += len(actions) + len(resources) + len(tools) + len(conditions.get("domains") or ())
        if patterns >= PATTERNS_PER_STEP or index % RULES_PER_STEP == RULES_PER_STEP - 1:
            patterns = 0
            yield
    deny, allow = domain_lists.get("deny"), domain_lists.get("allow")
    return _Policy(
        id=policy_id,
        name=str(document.get("name") or policy_id),
        priority=priority,
        enforce=enforce,
        default_deny=document.get("default_effect") == "deny",
        target=str(target.get("kind") or "tenant"),
        target_agent=str(target["agent_id"]) if target.get("agent_id") else None,
        selector=_selector(target.get("selector")),
        domain_deny=globs.domains(deny) if deny else None,
        domain_allow=globs.domains(allow) if allow else None,
        budget=budget,
        rate_limit=rate_limit,
        rules=tuple(rules),
        document=document,
    )


#: A rule as an agent's selection holds it: its position in evaluation order, then as ``_Indexed``.
_Placed = tuple[int, tuple[str, ...], globs.Matcher | None, _Entry]
#: A rule with an action pattern, as an agent's selection holds it: position, matcher, entry.
_GlobRule = tuple[int, globs.Matcher, _Entry]


def _is_glob(action: str) -> bool:
    return "*" in action or "?" in action


@dataclass(frozen=True, slots=True)
class Effective:
    """The policies that apply to one agent, arranged for evaluation.

    The rules are indexed once, in time linear in their number: rules whose actions are all exact names
    by name, the others (an action pattern with a wildcard) in chunks of about ``PATTERNS_PER_STEP``
    patterns. The rules an action may meet are worked out at its first request, by testing the pattern
    rules once and merging both by position (in steps, one chunk each: ``finding``), and kept
    (``MAX_CANDIDATE_SETS`` actions per agent selection).
    """

    policies: tuple[_Policy, ...]
    #: Rules whose actions are all exact names, by lower-cased name: (position, entry), in order.
    exact: Mapping[str, Sequence[tuple[int, _Entry]]]
    #: Rules with a wildcard action pattern, in order, in chunks of about ``PATTERNS_PER_STEP`` patterns.
    glob_chunks: tuple[tuple[_GlobRule, ...], ...]
    domain_rules: tuple[_Policy, ...]
    budgets: tuple[Budget, ...]
    rate_limits: tuple[RateLimit, ...]
    default_deny: tuple[_Policy, ...]
    #: ``rules_for`` answers worked out with the selection, when that is cheap (see ``EAGER_TESTS``).
    ready: Mapping[str, tuple[_Entry, ...]] = field(default_factory=dict)
    #: The rules' ``resource_weight`` together: whether any request's resource could cost a step to test.
    resource_weight: int = 0
    #: ``rules_for`` answers, by action.
    _by_action: dict[str, tuple[_Entry, ...]] = field(default_factory=dict)
    #: ``candidates`` answers, by (action, tool): agents repeat the same few calls.
    _candidates: dict[tuple[str, str | None], tuple[_Entry, ...]] = field(default_factory=dict)
    #: The ``resource_weight`` of each ``candidates`` answer together, by (action, tool).
    _weights: dict[tuple[str, str | None], int] = field(default_factory=dict)

    def rules_for(self, action: str) -> tuple[_Entry, ...]:
        """The rules that may match ``action`` (lower-cased), in evaluation order."""
        found = self.ready.get(action)
        if found is not None:
            return found
        found = self._by_action.get(action)
        if found is None:
            found = finish(self.finding(action))
        return found

    def knows(self, action: str) -> bool:
        """Whether ``action``'s rules are worked out already, or cost at most one step to work out."""
        return len(self.glob_chunks) <= 1 or action in self.ready or action in self._by_action

    def finding(self, action: str) -> Steps[tuple[_Entry, ...]]:
        """Work out (and keep) the rules that may match ``action`` (lower-cased), one step per chunk."""
        exact = self.exact.get(action, ())
        matching: list[tuple[int, _Entry]] = []
        for chunk in self.glob_chunks:
            matching += [(position, entry) for position, match, entry in chunk if match(action)]
            yield
        if matching and exact:
            merged = sorted((*exact, *matching), key=_position)
            found = tuple(entry for _, entry in merged)
        else:
            found = tuple(entry for _, entry in exact or matching)
        if len(self._by_action) >= MAX_CANDIDATE_SETS:
            self._by_action.clear()
        self._by_action[action] = found
        return found

    def candidates(self, action: str, tool: str | None) -> tuple[_Entry, ...]:
        """The rules that may match ``action`` with ``tool`` (both lower-cased), in evaluation order."""
        key = (action, tool)
        found = self._candidates.get(key)
        if found is None:
            found = tuple(
                entry
                for entry in self.rules_for(action)
                if entry[0].tool is None or (tool is not None and entry[0].tool(tool))
            )
            if len(self._candidates) >= MAX_CANDIDATE_SETS:
                self._candidates.clear()
                self._weights.clear()
            self._candidates[key] = found
            self._weights[key] = sum([entry[0].resource_weight for entry in found])
        return found

    def costly(self, request: Request) -> bool:
        """Whether testing ``request``'s resource against the rules it may meet is more than one step of
        work (``PATTERNS_PER_STEP`` pattern tests, a long resource counting as several): then ``narrowing``
        does it in steps before ``evaluate``. False at once for a selection with few resource patterns."""
        units = 1 + len(request.resource) // RESOURCE_CHARS_PER_UNIT
        if self.resource_weight * units <= PATTERNS_PER_STEP:
            return False
        key = (request.action.lower(), request.tool.lower() if request.tool else None)
        if key not in self._candidates:
            self.candidates(*key)
        return self._weights.get(key, 0) * units > PATTERNS_PER_STEP


def _position(item: tuple[int, _Entry]) -> int:
    return item[0]


#: Resource characters that count as one more pattern test (see ``Effective.costly``): matching a glob is
#: linear in the resource, and a resource may be 2,048 characters long.
RESOURCE_CHARS_PER_UNIT = 256


def narrowing(effective: Effective, request: Request) -> Steps[Effective]:
    """``effective`` for this one request, its resource tested in steps against the rules it may meet.

    The custom stage tests each candidate rule's resource patterns as it walks them, in one go; a tenant's
    rules may hold tens of thousands of costly patterns (``Effective.costly``). Here they are tested first,
    a step at a time (each matcher once: rules often share one pattern list), and the result is a copy of
    ``effective`` whose candidates for this action and tool are the rules whose resource matched, with
    nothing left to test; ``evaluate`` with it decides as it would with ``effective``. Use it for this
    request only.
    """
    action, tool = request.action.lower(), request.tool.lower() if request.tool else None
    resource = request.resource.lower()
    units = 1 + len(resource) // RESOURCE_CHARS_PER_UNIT
    tested: dict[int, bool] = {}
    kept: list[_Entry] = []
    spent = 0
    for rule, prefixes, matches, holds, kind in effective.candidates(action, tool):
        if prefixes is not None:
            if not resource.startswith(prefixes):
                continue
        elif matches is not None:
            found = tested.get(id(matches))
            if found is None:
                found = tested[id(matches)] = matches(resource)
                spent += rule.resource_weight * units
                if spent >= PATTERNS_PER_STEP:
                    spent = 0
                    yield
            if not found:
                continue
        kept.append((rule, None, None, holds, kind))
    return dataclasses.replace(
        effective, _by_action={}, _candidates={(action, tool): tuple(kept)}, _weights={}
    )


def _arranging(ordered: tuple[_Policy, ...], placed: Sequence[_Placed]) -> Steps[Effective]:
    """The selection of ``ordered`` (policies by precedence) whose rules are ``placed`` (in order)."""
    exact: dict[str, list[tuple[int, _Entry]]] = {}
    chunks: list[tuple[_GlobRule, ...]] = []
    chunk: list[_GlobRule] = []
    patterns = total = weight = 0
    for start in range(0, len(placed), ITEMS_PER_STEP):
        for position, actions, matcher, entry in placed[start : start + ITEMS_PER_STEP]:
            weight += entry[0].resource_weight
            if matcher is None:
                for action in actions:
                    exact.setdefault(action, []).append((position, entry))
                continue
            chunk.append((position, matcher, entry))
            patterns += len(actions)
            if patterns >= PATTERNS_PER_STEP or len(chunk) >= ITEMS_PER_STEP:
                chunks.append(tuple(chunk))
                total += patterns
                chunk, patterns = [], 0
        yield
    if chunk:
        chunks.append(tuple(chunk))
        total += patterns
    made = Effective(
        policies=ordered,
        exact=exact,
        glob_chunks=tuple(chunks),
        domain_rules=tuple(p for p in ordered if p.domain_deny is not None or p.domain_allow is not None),
        budgets=tuple(p.budget for p in ordered if p.budget is not None),
        rate_limits=tuple(p.rate_limit for p in ordered if p.rate_limit is not None),
        default_deny=tuple(p for p in ordered if p.default_deny),
        resource_weight=weight,
    )
    # The rules of the actions rules name, worked out now when that costs little (as for most agents), so
    # a first check of them is as quick as the next; past the bound, at each action's first check.
    if len(exact) * total <= EAGER_TESTS and len(exact) <= MAX_CANDIDATE_SETS:
        ready: dict[str, tuple[_Entry, ...]] = {}
        for action in exact:
            ready[action] = yield from made.finding(action)
        made._by_action.clear()
        made = dataclasses.replace(made, ready=ready)
    return made


#: A rule being placed: its ``order``, the index of its policy, the rule.
_Item = tuple[tuple[int, int, int], int, _Indexed]


class PolicySet:
    """A tenant's compiled policies at one version; per-agent selections are cached.

    Building it is linear in the rules: every rule gets its place in evaluation order once (rule
    priority, policy priority, place in the document, then policy rank: priority, id), so an agent's
    selection is its policies' rules taken in place order, never a search through the others. Agents to
    whom the same policies apply share one selection. Building and selecting also run in steps
    (``in_steps``, ``selecting``), so that a server compiles the largest set without stalling.
    """

    def __init__(
        self, version: int, documents: Iterable[Mapping[str, Any]], max_cached: int = 50_000
    ) -> None:
        compiled = [compile_policy(document) for document in documents if document.get("enabled", True)]
        finish(self._placing(version, compiled, max_cached))

    @classmethod
    def of_compiled(cls, version: int, policies: Iterable[_Policy], max_cached: int = 50_000) -> PolicySet:
        """The set of policies already compiled with ``compile_policy`` (enabled ones only)."""
        made = cls.__new__(cls)
        finish(made._placing(version, list(policies), max_cached))
        return made

    @classmethod
    def in_steps(
        cls, version: int, documents: Iterable[Mapping[str, Any]], max_cached: int = 50_000
    ) -> Steps[PolicySet]:
        """``PolicySet(version, documents)`` in steps (see ``Pace``): compiling, then placing the rules."""
        return cls.amending(version, (), documents, max_cached)

    @classmethod
    def amending(
        cls,
        version: int,
        compiled: Iterable[_Policy],
        documents: Iterable[Mapping[str, Any]],
        max_cached: int = 50_000,
    ) -> Steps[PolicySet]:
        """In steps, the set of the ``compiled`` policies (another set's ``policies``) and ``documents``,
        each document in place of the compiled policy of the same id (a simulation's drafts over the saved
        set: only the drafts are compiled)."""
        added: list[_Policy] = []
        replaced: set[str] = set()
        pace = Pace()
        for document in documents:
            replaced.add(str(document.get("id")))
            if document.get("enabled", True):
                policy = yield from compiling(document)
                added.append(policy)
                # Many small policies pause too, not only a large one.
                if pace.due(0, len(policy.rules) + 1):
                    yield
        kept = [policy for policy in compiled if policy.id not in replaced] if replaced else list(compiled)
        made = cls.__new__(cls)
        yield from made._placing(version, kept + added, max_cached)
        return made

    def _placing(self, version: int, compiled: list[_Policy], max_cached: int) -> Steps[None]:
        self.version = version
        self.policies = tuple(compiled)
        ranked = sorted(range(len(compiled)), key=lambda at: (-compiled[at].priority, compiled[at].id))
        # Deny overrides allow whatever the order, which decides only the rule reported and how soon a
        # walk may stop: a rule's ``order`` (rule priority, policy priority, place in the document), then
        # its policy's rank. Sorted as a radix sort would, least significant key first: the rules taken
        # by policy rank, then put stably in buckets by place, policy priority and rule priority. Each
        # pass is linear and in steps; a pass whose key is the same for every rule is skipped.
        items: list[_Item] = []
        rule_priorities: set[int] = set()
        since = 0
        for at in ranked:
            taken = [(rule[2][0].order, at, rule) for rule in compiled[at].rules]
            rule_priorities.update(order[0] for order, _, _ in taken)
            items += taken
            since += len(taken)
            if since >= ITEMS_PER_STEP:
                since = 0
                yield
        distinct = (len(rule_priorities), len({policy.priority for policy in compiled}), len(compiled))
        for part in (2, 1, 0):
            if distinct[part] > 1:
                items = yield from _bucketed(items, part)
        owners: list[int] = []
        ordered: list[_Placed] = []
        placed: list[list[_Placed]] = [[] for _ in compiled]
        for position, (_, at, (actions, matcher, entry)) in enumerate(items):
            item = (position, actions, matcher, entry)
            placed[at].append(item)
            owners.append(at)
            ordered.append(item)
            if position % ITEMS_PER_STEP == ITEMS_PER_STEP - 1:
                yield
        self._ranked = tuple(ranked)
        self._placed = tuple(tuple(items) for items in placed)
        #: Every rule in evaluation order, and the index of its policy.
        self._ordered = ordered
        self._owners = owners
        self._effective: dict[tuple[Any, ...], Effective] = {}
        self._selections: dict[tuple[int, ...], Effective] = {}
        self._max_cached = max_cached
        #: Each policy's document as canonical JSON, by policy id, once a bundle needed it.
        self._encoded: dict[str, bytes] = {}

    @property
    def rule_count(self) -> int:
        """How many rules the enabled policies hold."""
        return len(self._ordered)

    def effective(self, subject: Subject) -> Effective:
        """The policies that apply to ``subject`` (cached by the attributes targeting depends on)."""
        found = self._effective.get(subject.target_key)
        return found if found is not None else finish(self.selecting(subject))

    def cached(self, subject: Subject) -> Effective | None:
        """``effective(subject)`` when it was worked out already (else ``selecting`` works it out)."""
        return self._effective.get(subject.target_key)

    def selecting(self, subject: Subject) -> Steps[Effective]:
        """``effective`` in steps: the selection for ``subject``, made (or shared) and kept."""
        chosen = tuple(at for at in self._ranked if self.policies[at].applies_to(subject))
        found = self._selections.get(chosen)
        if found is None:
            placed = yield from self._gathering(chosen)
            found = yield from _arranging(tuple(self.policies[at] for at in chosen), placed)
            if len(self._selections) >= self._max_cached:
                self._selections.clear()
            self._selections[chosen] = found
        if len(self._effective) >= self._max_cached:
            self._effective.clear()
        self._effective[subject.target_key] = found
        return found

    def _gathering(self, chosen: tuple[int, ...]) -> Steps[Sequence[_Placed]]:
        """The rules of the ``chosen`` policies in evaluation order."""
        if len(chosen) == len(self.policies):
            return self._ordered
        if sum(len(self._placed[at]) for at in chosen) <= ITEMS_PER_STEP:
            # Each policy's rules are already in order: sorting the concatenation merges the runs.
            return sorted(itertools.chain.from_iterable(self._placed[at] for at in chosen), key=_first)
        wanted = bytearray(len(self.policies))
        for at in chosen:
            wanted[at] = 1
        placed: list[_Placed] = []
        owners, ordered = self._owners, self._ordered
        for start in range(0, len(ordered), ITEMS_PER_STEP):
            end = start + ITEMS_PER_STEP
            pairs = zip(owners[start:end], ordered[start:end], strict=True)
            placed += [item for at, item in pairs if wanted[at]]
            yield
        return placed

    def releasing(self) -> Steps[None]:
        """Empty this set, in steps (see ``Pace``), for a caller done with a set nobody else holds (a
        simulation's): a set of 50,000 rules is some 200,000 objects, and freeing them all at once, when
        the last reference goes, takes 20 ms and more. The compiled policies are left to whoever else
        holds them."""
        self._placed = ()
        for effective in self._selections.values():
            exact = effective.exact
            if isinstance(exact, dict):
                while exact:
                    for _ in range(min(ITEMS_PER_STEP, len(exact))):
                        exact.popitem()
                    yield
        self._selections.clear()
        self._effective.clear()
        ordered = self._ordered
        while ordered:
            del ordered[-ITEMS_PER_STEP:]
            yield
        self._owners = []

    def documents_for(self, subject: Subject) -> list[Mapping[str, Any]]:
        """The documents of the policies that apply to ``subject`` (a bundle's content)."""
        return [policy.document for policy in self.effective(subject).policies]

    def encoding(self, subject: Subject) -> Steps[list[bytes]]:
        """``canonical(documents_for(subject))`` in steps of about ``BYTES_PER_STEP``, as the pieces that
        ``b"".join`` makes it of.

        A bundle may hold every document of the tenant (32 MiB at the largest plan): each document is
        encoded once per set and kept, so the next bundle only gathers them; the pieces are left for the
        caller to join where copying tens of MiB holds nothing up (``bytes.join`` releases the GIL).
        Documents are stored through the edge validator and read back through a JSON parser, so none
        holds a non-finite number and the walk that looks for one is skipped.
        """
        pieces = [b"["]
        since = 0
        for policy in self.effective(subject).policies:
            encoded = self._encoded.get(policy.id)
            if encoded is None:
                encoded = self._encoded[policy.id] = canonical(dict(policy.document), check_finite=False)
                since += len(encoded)
                if since >= BYTES_PER_STEP:
                    since = 0
                    yield
            if len(pieces) > 1:
                pieces.append(b",")
            pieces.append(encoded)
        pieces.append(b"]")
        return pieces


def _bucketed(items: list[_Item], part: int) -> Steps[list[_Item]]:
    """``items`` sorted stably by ``order[part]``: one pass into buckets, in steps."""
    buckets: dict[int, list[_Item]] = {}
    for start in range(0, len(items), ITEMS_PER_STEP):
        for item in items[start : start + ITEMS_PER_STEP]:
            key = item[0][part]
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = []
            bucket.append(item)
        yield
    merged: list[_Item] = []
    for key in sorted(buckets):
        merged += buckets[key]
    return merged


def _first(item: _Placed) -> int:
    return item[0]


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
    steps: list[dict[str, Any]] | None = [] if trace else None
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
        steps.append(_step("kill_switch", "pass"))

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
        steps.append(_step("capability", "pass"))

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
                steps, "budget", Code.BUDGET_EXCEEDED, _budget_reason(exceeded), None, exceeded.policy_id,
                would, (), (), cost,
            )  # fmt: skip
            denied.budget_remaining = remaining
            return denied
        budgets = ()
        if steps is not None:
            steps.append(_step("budget", "pass", f"remaining {remaining}"))
    elif steps is not None:
        steps.append(_step("budget", "pending" if budgets else "skip"))

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
        steps.append(_step("domain", "pass" if domain is not None else "skip"))

    # 5. custom rules. Once an enforced allow rule matched, only a deny rule can change the verdict (deny
    # overrides) and the reported rule is known: the other allow rules are passed over untested.
    resource = request.resource.lower()
    allowed_by: _Rule | None = None
    #: Whether any allow rule matched, dry-run ones included: a dry-run default deny asks as if enforced.
    any_allow = False
    # Tests inlined (resource, then conditions): this loop is the hot path.
    for rule, prefixes, matches, holds, kind in effective.candidates(request.action.lower(), tool):
        if allowed_by is not None and kind != _DENY:
            continue
        if prefixes is not None:
            if not resource.startswith(prefixes):
                continue
        elif matches is not None and not matches(resource):
            continue
        if holds is not None and not holds(subject, request, at):
            continue
        if kind == _ALLOW:
            allowed_by, any_allow = rule, True
        elif kind == _ALLOW_DRY_RUN:
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
        steps.append(
            _step("custom", "pass", f"allowed by rule {allowed_by.id!r}" if allowed_by else "no rule denies")
        )
    return Decision(  # positional, in field order: keyword arguments cost a third of a microsecond here
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
    steps: list[dict[str, Any]] | None,
    stage: str,
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
        steps.append(_step(stage, "deny", reason))
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


# -- bundles -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """An agent's effective policy as served by ``GET /v1/policies/bundle``, ready for local evaluation."""

    tenant_id: str
    version: int
    subject: Subject
    policies: PolicySet
    issued_at: str
    expires_at: str

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Bundle:
        """The bundle for a (signature-verified) payload."""
        return cls(
            tenant_id=str(payload["tenant_id"]),
            version=int(payload["version"]),
            subject=Subject.from_json(payload["agent"]),
            policies=PolicySet(int(payload["version"]), payload.get("policies") or []),
            issued_at=str(payload["issued_at"]),
            expires_at=str(payload["expires_at"]),
        )

    def evaluate(
        self,
        request: Request,
        *,
        status: str | None = None,
        spent: Mapping[str, float] | None = None,
        trace: bool = False,
    ) -> Decision:
        """Decide ``request`` locally (``status`` overrides the bundle's, after a kill-switch command)."""
        subject = self.subject if status is None else self.subject.with_status(status)
        return evaluate(self.policies, subject, request, spent=spent, trace=trace)


def bundle_payload(
    tenant_id: str,
    policies: PolicySet,
    subject: Subject,
    issued_at: str,
    expires_at: str,
) -> dict[str, Any]:
    """The signed content of an agent's bundle."""
    return {
        "tenant_id": tenant_id,
        "version": policies.version,
        "agent": subject.to_json(),
        "policies": [dict(document) for document in policies.documents_for(subject)],
        "issued_at": issued_at,
        "expires_at": expires_at,
    }


#: Canonical JSON as the pieces ``b"".join`` makes it of (see ``PolicySet.encoding``).
Pieces = list[bytes]


def bundle_content(version: int, subject: Subject, documents: Pieces) -> Pieces:
    """What a bundle's ETag hashes: canonical ``{"version", "agent", "policies"}``, the policies' documents
    given as ``PolicySet.encoding`` made them."""
    return canonical_object(
        {"version": canonical(version), "agent": canonical(subject.to_json()), "policies": documents}
    )


def signed_payload(
    tenant_id: str, version: int, subject: Subject, documents: Pieces, issued_at: str, expires_at: str
) -> Pieces:
    """``canonical(bundle_payload(...))``, which a bundle's signature covers, with the policies' documents
    given as ``PolicySet.encoding`` made them (they are most of a large bundle)."""
    members: dict[str, bytes | Pieces] = {
        "tenant_id": canonical(tenant_id),
        "version": canonical(version),
        "agent": canonical(subject.to_json()),
        "policies": documents,
        "issued_at": canonical(issued_at),
        "expires_at": canonical(expires_at),
    }
    return canonical_object(members)


def canonical_object(members: Mapping[str, bytes | Pieces]) -> Pieces:
    """``canonical`` of a JSON object whose members' values are canonical JSON already (bytes, or pieces),
    as pieces: names sorted, no spaces, as ``canonical`` writes an object. Nothing large is copied."""
    pieces: Pieces = []
    for name in sorted(members):
        pieces.append((b"{" if not pieces else b",") + canonical(name) + b":")
        value = members[name]
        if isinstance(value, bytes):
            pieces.append(value)
        else:
            pieces += value
    pieces.append(b"}" if pieces else b"{}")
    return pieces
