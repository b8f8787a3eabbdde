"""What is asked and who asks: the ``Request`` an agent makes and the ``Subject`` it is, as the evaluator
sees them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aigos.core import globs


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
