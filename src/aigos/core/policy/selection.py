"""An agent's selection of a policy set (``Effective``): the policies that apply to it, their rules indexed
by action, and the rules each action may meet, worked out once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aigos.core import globs
from aigos.core.policy.compiled import CompiledPolicy, Entry
from aigos.core.policy.decision import Budget, RateLimit
from aigos.core.policy.request import Request
from aigos.core.policy.steps import ITEMS_PER_STEP, PATTERNS_PER_STEP, Steps, finish

#: Per agent: how many (action, tool) pairs keep their candidate rules cached.
MAX_CANDIDATE_SETS = 512
#: Per agent selection: at most this many pattern tests to work out every exact action's rules in advance.
EAGER_TESTS = 20_000
#: A rule as an agent's selection holds it: its position in evaluation order, then as ``Indexed``.
Placed = tuple[int, tuple[str, ...], globs.Matcher | None, Entry]
#: A rule with an action pattern, as an agent's selection holds it: position, matcher, entry.
GlobRule = tuple[int, globs.Matcher, Entry]


@dataclass(frozen=True, slots=True)
class Effective:
    """The policies that apply to one agent, arranged for evaluation.

    The rules are indexed once, in time linear in their number: rules whose actions are all exact names
    by name, the others (an action pattern with a wildcard) in chunks of about ``PATTERNS_PER_STEP``
    patterns. The rules an action may meet are worked out at its first request, by testing the pattern
    rules once and merging both by position (in steps, one chunk each: ``finding``), and kept
    (``MAX_CANDIDATE_SETS`` actions per agent selection).
    """

    policies: tuple[CompiledPolicy, ...]
    #: Rules whose actions are all exact names, by lower-cased name: (position, entry), in order.
    exact: Mapping[str, Sequence[tuple[int, Entry]]]
    #: Rules with a wildcard action pattern, in order, in chunks of about ``PATTERNS_PER_STEP`` patterns.
    glob_chunks: tuple[tuple[GlobRule, ...], ...]
    domain_rules: tuple[CompiledPolicy, ...]
    budgets: tuple[Budget, ...]
    rate_limits: tuple[RateLimit, ...]
    default_deny: tuple[CompiledPolicy, ...]
    #: ``rules_for`` answers worked out with the selection, when that is cheap (see ``EAGER_TESTS``).
    ready: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)
    #: The rules' ``resource_weight`` together: whether any request's resource could cost a step to test.
    resource_weight: int = 0
    #: ``rules_for`` answers, by action.
    _by_action: dict[str, tuple[Entry, ...]] = field(default_factory=dict)
    #: ``candidates`` answers, by (action, tool): agents repeat the same few calls.
    _candidates: dict[tuple[str, str | None], tuple[Entry, ...]] = field(default_factory=dict)
    #: The ``resource_weight`` of each ``candidates`` answer together, by (action, tool).
    _weights: dict[tuple[str, str | None], int] = field(default_factory=dict)

    def rules_for(self, action: str) -> tuple[Entry, ...]:
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

    def finding(self, action: str) -> Steps[tuple[Entry, ...]]:
        """Work out (and keep) the rules that may match ``action`` (lower-cased), one step per chunk."""
        exact = self.exact.get(action, ())
        matching: list[tuple[int, Entry]] = []
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

    def candidates(self, action: str, tool: str | None) -> tuple[Entry, ...]:
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


def _position(item: tuple[int, Entry]) -> int:
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
    kept: list[Entry] = []
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


def arranging(ordered: tuple[CompiledPolicy, ...], placed: Sequence[Placed]) -> Steps[Effective]:
    """The selection of ``ordered`` (policies by precedence) whose rules are ``placed`` (in order)."""
    exact: dict[str, list[tuple[int, Entry]]] = {}
    chunks: list[tuple[GlobRule, ...]] = []
    chunk: list[GlobRule] = []
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
        ready: dict[str, tuple[Entry, ...]] = {}
        for action in exact:
            ready[action] = yield from made.finding(action)
        made._by_action.clear()
        made = dataclasses.replace(made, ready=ready)
    return made
