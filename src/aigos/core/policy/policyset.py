"""A tenant's compiled policies at one version (``PolicySet``): every rule placed once in evaluation order,
per-agent selections cached, documents encoded once for bundles.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aigos.core.canonical import canonical
from aigos.core.policy.compiled import CompiledPolicy, Indexed, compile_policy, compiling
from aigos.core.policy.request import Subject
from aigos.core.policy.selection import Effective, Placed, arranging
from aigos.core.policy.steps import BYTES_PER_STEP, ITEMS_PER_STEP, Pace, Steps, finish

#: A rule being placed: its ``order``, the index of its policy, the rule.
_Item = tuple[tuple[int, int, int], int, Indexed]


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
    def of_compiled(
        cls, version: int, policies: Iterable[CompiledPolicy], max_cached: int = 50_000
    ) -> PolicySet:
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
        compiled: Iterable[CompiledPolicy],
        documents: Iterable[Mapping[str, Any]],
        max_cached: int = 50_000,
    ) -> Steps[PolicySet]:
        """In steps, the set of the ``compiled`` policies (another set's ``policies``) and ``documents``,
        each document in place of the compiled policy of the same id (a simulation's drafts over the saved
        set: only the drafts are compiled)."""
        added: list[CompiledPolicy] = []
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

    def _placing(self, version: int, compiled: list[CompiledPolicy], max_cached: int) -> Steps[None]:
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
        ordered: list[Placed] = []
        placed: list[list[Placed]] = [[] for _ in compiled]
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
            found = yield from arranging(tuple(self.policies[at] for at in chosen), placed)
            if len(self._selections) >= self._max_cached:
                self._selections.clear()
            self._selections[chosen] = found
        if len(self._effective) >= self._max_cached:
            self._effective.clear()
        self._effective[subject.target_key] = found
        return found

    def _gathering(self, chosen: tuple[int, ...]) -> Steps[Sequence[Placed]]:
        """The rules of the ``chosen`` policies in evaluation order."""
        if len(chosen) == len(self.policies):
            return self._ordered
        if sum(len(self._placed[at]) for at in chosen) <= ITEMS_PER_STEP:
            # Each policy's rules are already in order: sorting the concatenation merges the runs.
            return sorted(itertools.chain.from_iterable(self._placed[at] for at in chosen), key=_first)
        wanted = bytearray(len(self.policies))
        for at in chosen:
            wanted[at] = 1
        placed: list[Placed] = []
        owners, ordered = self._owners, self._ordered
        for start in range(0, len(ordered), ITEMS_PER_STEP):
            end = start + ITEMS_PER_STEP
            pairs = zip(owners[start:end], ordered[start:end], strict=True)
            placed += [item for at, item in pairs if wanted[at]]
            yield
        return placed

    def releasing(self) -> Steps[None]:
        """Empty this set, in steps (see ``Pace``), for a caller done with a set nobody else holds (a
        simulation's): a large set is hundreds of thousands of objects, and freeing them all at once,
        when the last reference goes, would hold the event loop (``bench/policy_compile.py`` measures it).
        The compiled policies are left to whoever else holds them."""
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


def _first(item: Placed) -> int:
    return item[0]
