"""The policy document: its vocabulary and limits, and the checks only the evaluator can make."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aigos.core import globs
from aigos.core.policy.steps import Pace, Steps, finish

PERIODS = ("lifetime", "daily", "monthly")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


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
        zone(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        errors.append((f"{pointer}/timezone", f"unknown time zone {tz!r}"))
    return errors


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The time zone of an IANA name (``ZoneInfoNotFoundError`` or ``ValueError`` when there is none)."""
    return ZoneInfo(name)
