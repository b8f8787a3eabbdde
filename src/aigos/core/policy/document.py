"""The policy document: its vocabulary, its limits, and the checks only the evaluator can make.

This is the one place the document's limits are written: the server's API schema
(``aigos.server.policy.schemas``) takes its bounds, literals and field checks from here, and ``validate``
holds a document to the same ones (a stored document, a bundle's, a simulation's draft), with what only
the evaluator knows: that each pattern compiles to what it looks like and that rule ids are unique. What
a tenant's plan allows on top (rules per policy, bytes) is the server's (``aigos.server.tenancy.plans``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aigos.core import globs
from aigos.core.policy.steps import Pace, Steps, finish

# -- vocabulary ----------------------------------------------------------------------------------------

Effect = Literal["allow", "deny"]
Mode = Literal["enforce", "dry_run"]
TargetKind = Literal["tenant", "agent", "selector"]
Period = Literal["lifetime", "daily", "monthly"]
Scope = Literal["agent", "shared"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
PERIODS: Final[tuple[Period, ...]] = get_args(Period)
SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)
DAYS: Final[tuple[Day, ...]] = get_args(Day)

# -- limits --------------------------------------------------------------------------------------------

#: Characters in one name or domain pattern.
MAX_PATTERN: Final = globs.MAX_PATTERN
#: A rule id (filled in as ``rule-N`` when left out).
RULE_ID: Final = r"^[A-Za-z0-9_.:-]{1,64}$"
#: A time of day in a rule's time window: ``HH:MM``, 24-hour clock.
HHMM: Final = r"^([01]\d|2[0-3]):[0-5]\d$"
MAX_NAME: Final = 255
MAX_DESCRIPTION: Final = 2000
MAX_RULE_DESCRIPTION: Final = 500
MAX_RULES: Final = 500
#: Action patterns, and resource patterns, in one rule.
MAX_RULE_PATTERNS: Final = 100
#: Tool patterns, and domain patterns, in one rule's conditions.
MAX_CONDITION_PATTERNS: Final = 200
#: Patterns in a policy's domain allow list, and in its deny list.
MAX_DOMAIN_PATTERNS: Final = 500
#: Values a selector may list for an agent type or an owner, and for a deployment environment.
MAX_SELECTOR_VALUES: Final = 50
MAX_SELECTOR_ENVS: Final = 10
#: Priority of a policy or a rule: from ``-MAX_PRIORITY`` to ``MAX_PRIORITY``, higher first.
MAX_PRIORITY: Final = 1000
#: A rate limit's checks, and its period in seconds (more than 0).
MIN_RATE_REQUESTS: Final = 1
MAX_RATE_REQUESTS: Final = 1_000_000
MAX_RATE_SECONDS: Final = 86_400

_HHMM = re.compile(HHMM)


def hhmm_error(value: object) -> str | None:
    """Why ``value`` is not a time of day of a window (``HHMM``), or None."""
    return None if _HHMM.match(str(value)) else "must be HH:MM (24-hour clock)"


def zone_error(name: object) -> str | None:
    """Why ``name`` is not a time zone the evaluator knows, or None."""
    try:
        zone(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r}"
    return None


def span_error(start: object, end: object) -> tuple[str, str] | None:
    """Why a window's ``start`` and ``end`` do not make a span: (the field to blame, the detail), or None."""
    if (start is None) != (end is None):
        return ("end" if end is None else "start", "start and end go together")
    if start is not None and start == end:
        return ("end", "must differ from start (leave both out for the whole day)")
    return None


# -- validation ----------------------------------------------------------------------------------------


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
    if (
        not isinstance(requests, int)
        or isinstance(requests, bool)
        or not MIN_RATE_REQUESTS <= requests <= MAX_RATE_REQUESTS
    ):
        errors.append(
            (
                "/rate_limit/requests",
                f"must be a whole number from {MIN_RATE_REQUESTS:,} to {MAX_RATE_REQUESTS:,}",
            )
        )
    if not isinstance(period, int | float) or isinstance(period, bool) or not 0 < period <= MAX_RATE_SECONDS:
        errors.append(("/rate_limit/per_seconds", f"must be more than 0 and at most {MAX_RATE_SECONDS}"))
    if rate.get("scope", "agent") not in SCOPES:
        errors.append(("/rate_limit/scope", f"must be {' or '.join(SCOPES)}"))
    return errors


def _budget_errors(budget: Mapping[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    limit = budget.get("limit")
    if not isinstance(limit, int | float) or isinstance(limit, bool) or not 0 <= limit < float("inf"):
        errors.append(("/budget/limit", "must be a number >= 0"))
    if budget.get("period", "lifetime") not in PERIODS:
        errors.append(("/budget/period", f"must be one of {', '.join(PERIODS)}"))
    if budget.get("scope", "agent") not in SCOPES:
        errors.append(("/budget/scope", f"must be {' or '.join(SCOPES)}"))
    return errors


def _window_errors(pointer: str, window: Mapping[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    span = span_error(window.get("start"), window.get("end"))
    if span is not None:
        errors.append((f"{pointer}/{span[0]}", span[1]))
    for index, day in enumerate(window.get("days") or []):
        if day not in DAYS:
            errors.append((f"{pointer}/days/{index}", f"must be one of {', '.join(DAYS)}"))
    for name in ("start", "end"):
        value = window.get(name)
        problem = hhmm_error(value) if value is not None else None
        if problem:
            errors.append((f"{pointer}/{name}", problem))
    problem = zone_error(window.get("timezone") or "UTC")
    if problem:
        errors.append((f"{pointer}/timezone", problem))
    return errors


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The time zone of an IANA name (``ZoneInfoNotFoundError`` or ``ValueError`` when there is none)."""
    return ZoneInfo(name)
