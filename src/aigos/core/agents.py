"""The agent's status lifecycle, versions and capabilities: the rules every context applies the same way."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from aigos.core import globs


class AgentStatus(StrEnum):
    """Where an agent is in its life.

    - ``active``: works normally.
    - ``paused``: authenticates (so it can hear RESUME) but every policy check answers ``PAUSED``.
    - ``suspended``: an administrator stopped it for now; its tokens are refused.
    - ``terminated``: stopped for good (kill switch or deregistration); tokens refused; record kept.
    - ``archived``: a terminated agent moved out of everyday lists; nothing can bring it back.
    """

    ACTIVE = "active"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"
    ARCHIVED = "archived"


TRANSITIONS: dict[AgentStatus, frozenset[AgentStatus]] = {
    AgentStatus.ACTIVE: frozenset({AgentStatus.PAUSED, AgentStatus.SUSPENDED, AgentStatus.TERMINATED}),
    AgentStatus.PAUSED: frozenset({AgentStatus.ACTIVE, AgentStatus.SUSPENDED, AgentStatus.TERMINATED}),
    AgentStatus.SUSPENDED: frozenset({AgentStatus.ACTIVE, AgentStatus.TERMINATED}),
    AgentStatus.TERMINATED: frozenset({AgentStatus.ARCHIVED}),
    AgentStatus.ARCHIVED: frozenset(),
}

#: Statuses whose agents may obtain and use tokens.
TOKEN_HOLDING: frozenset[AgentStatus] = frozenset({AgentStatus.ACTIVE, AgentStatus.PAUSED})


def can_transition(current: AgentStatus, target: AgentStatus) -> bool:
    """Whether ``current`` may become ``target``."""
    return target in TRANSITIONS[current]


def may_hold_tokens(status: AgentStatus | str) -> bool:
    """Whether an agent in ``status`` may authenticate."""
    return AgentStatus(status) in TOKEN_HOLDING


# Semantic Versioning 2.0.0, the regular expression the specification itself recommends.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


def is_semver(version: str) -> bool:
    """Whether ``version`` is a valid semantic version."""
    return SEMVER.match(version) is not None


@dataclass(frozen=True)
class Capabilities:
    """What an agent may use: tool and domain patterns (case-insensitive globs) and a budget ceiling."""

    tools: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    max_budget: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def to_claim(self) -> dict[str, object]:
        """The ``aigos:capabilities`` claim."""
        return {"tools": list(self.tools), "domains": list(self.domains), "max_budget": self.max_budget}

    def covers(self, child: Capabilities) -> list[str]:
        """Why ``child`` is not a subset of these capabilities (empty when it is).

        A child pattern is covered when one of ours matches it as a name (``web_*`` covers ``web_search``
        and ``web_*`` itself, see ``globs.covers``); a child budget must not exceed ours.
        """
        problems = [f"tool {tool!r}" for tool in child.tools if not _covered(tool, self.tools)]
        problems += [f"domain {domain!r}" for domain in child.domains if not _covered(domain, self.domains)]
        if self.max_budget is not None and (child.max_budget is None or child.max_budget > self.max_budget):
            problems.append(f"max_budget {child.max_budget} above {self.max_budget}")
        return problems

    def narrowed_to(self, bounds: Capabilities) -> Capabilities:
        """These capabilities cut down to what ``bounds`` allows (an asset card narrowing its agents).

        A pattern of ours stays when ``bounds`` cover it; a pattern of ``bounds`` is taken when one of ours
        covers it (``web_*`` narrowed to ``web_search`` gives ``web_search``); the smaller budget wins.
        What ``covers`` returns for the result and ``bounds`` is then empty.
        """
        budgets = [b for b in (self.max_budget, bounds.max_budget) if b is not None]
        return Capabilities(
            tools=_meet(self.tools, bounds.tools),
            domains=_meet(self.domains, bounds.domains),
            max_budget=min(budgets) if budgets else None,
            extra=self.extra,
        )


def _meet(ours: Iterable[str], bounds: Iterable[str]) -> tuple[str, ...]:
    ours, bounds = tuple(ours), tuple(bounds)
    kept = [pattern for pattern in ours if _covered(pattern, bounds)]
    kept += [pattern for pattern in bounds if _covered(pattern, ours) and not _covered(pattern, kept)]
    return tuple(kept)


def _covered(pattern: str, allowed: Iterable[str]) -> bool:
    return any(globs.covers(candidate, pattern) for candidate in allowed)
