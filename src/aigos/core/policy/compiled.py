"""The compiled form of one policy document: its rules as the evaluator walks them, its selector, its
domain lists, budget and rate limit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as clock
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

from aigos.core import globs
from aigos.core.policy.decision import Budget, RateLimit
from aigos.core.policy.document import DAYS, PolicyError, validating, zone
from aigos.core.policy.request import Request, Subject
from aigos.core.policy.steps import PATTERNS_PER_STEP, RULES_PER_STEP, Steps, finish


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
        zone=zone(str(spec.get("timezone") or "UTC")),
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


class CompiledRule(NamedTuple):
    """A compiled rule (a named tuple: made for every rule of every compile, and cheaper to make than a
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
Entry = tuple[CompiledRule, tuple[str, ...] | None, globs.Matcher | None, _Conditions | None, int]
#: ``Entry`` kinds.
DENY, ALLOW, ALLOW_DRY_RUN = 0, 1, 2


# Rules of a tenant often repeat the same resource and tool lists: compile each list once.
@functools.lru_cache(maxsize=4096)
def _names(patterns: tuple[str, ...]) -> globs.Matcher:
    return globs.names(patterns)


@functools.lru_cache(maxsize=4096)
def _resource_matcher(patterns: tuple[str, ...]) -> tuple[globs.Matcher | None, tuple[str, ...] | None]:
    """A rule's resource matcher and literal prefixes (see ``CompiledRule``); both None for every resource."""
    if "*" in patterns:
        return None, None
    return globs.names(patterns), globs.prefixes(patterns)


#: A rule as its policy holds it: its action patterns (lower-cased, each once), a matcher of them when one
#: has a wildcard (else ``None``: exact names, indexed by name), and the entry the custom stage reads.
Indexed = tuple[tuple[str, ...], globs.Matcher | None, Entry]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One policy document compiled: whom it applies to, its domain lists, budget, rate limit and rules."""

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
    #: The rules in document order (see ``Indexed``).
    rules: tuple[Indexed, ...]
    document: Mapping[str, Any]

    def applies_to(self, subject: Subject) -> bool:
        """Whether the policy targets ``subject``."""
        if self.target == "agent":
            return self.target_agent == subject.agent_id
        if self.target == "selector":
            return self.selector.selects(subject)
        return True


def compile_policy(document: Mapping[str, Any]) -> CompiledPolicy:
    """The compiled form of one (validated) policy document."""
    return finish(compiling(document))


def compiling(document: Mapping[str, Any]) -> Steps[CompiledPolicy]:
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
    rules: list[Indexed] = []
    patterns = 0
    for index, spec in enumerate(document.get("rules") or ()):
        # The hot loop of a compile (once per rule of every policy): no generators, no keyword calls.
        conditions = spec.get("conditions") or {}
        resources = tuple(spec.get("resources") or ("*",))
        tools = tuple(conditions["tools"]) if conditions.get("tools") else ()
        matcher, prefixes = _resource_matcher(resources)
        effect: Literal["allow", "deny"] = "deny" if spec.get("effect") == "deny" else "allow"
        rule = CompiledRule(
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
        kind = DENY if effect == "deny" else ALLOW if enforce else ALLOW_DRY_RUN
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
    return CompiledPolicy(
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


def _is_glob(action: str) -> bool:
    return "*" in action or "?" in action
