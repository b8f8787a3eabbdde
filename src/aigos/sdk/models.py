"""What the SDK hands back: an agent's identity, a policy decision, a kill-switch command."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any

from aigos.core import policy as core


@dataclass(frozen=True, slots=True)
class Identity:
    """A registered agent: its id, its OAuth client credentials (the secret is shown once) and token."""

    agent_id: str
    client_id: str
    client_secret: str | None
    identity_token: str
    expires_at: datetime | None
    agent: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_registration(cls, body: dict[str, Any]) -> Identity:
        """From the answer of ``POST /v1/agents/register``."""
        expires = body.get("expires_at")
        return cls(
            agent_id=str(body["agent_id"]),
            client_id=str(body["client_id"]),
            client_secret=body.get("client_secret"),
            identity_token=str(body["identity_token"]),
            expires_at=datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None,
            agent=dict(body.get("agent") or {}),
        )


#: A core decision's verdict fields, as a tuple in ``Decision``'s order.
_verdict = attrgetter(*core.VERDICT_FIELDS)


@dataclass(slots=True)
class Decision(core.Verdict):
    """The answer to a policy check, remote (``/v1/policies/check``) or local (``local=True``): the verdict's
    fields (``aigos.core.policy.Verdict``), then what the server adds.

    Not frozen on purpose: a frozen dataclass's ``__init__`` costs more, on the local hot path.
    """

    decision_id: str | None = None
    policy_version: int | None = None
    latency_ms: float | None = None
    would_deny: tuple[dict[str, Any], ...] = ()
    trace: tuple[core.TraceStep, ...] | None = None
    local: bool = False
    fail_open: bool = False

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Decision:
        """From the server's check response."""
        trace = body.get("trace")
        verdict: dict[str, Any] = {name: body.get(name) for name in core.VERDICT_FIELDS}
        verdict["allowed"] = bool(verdict["allowed"])
        return cls(
            **verdict,
            decision_id=body.get("decision_id"),
            policy_version=body.get("policy_version"),
            latency_ms=body.get("latency_ms"),
            would_deny=tuple(body.get("would_deny") or ()),
            trace=tuple(trace) if trace is not None else None,
        )

    @classmethod
    def local_of(cls, decided: core.Verdict, policy_version: int) -> Decision:
        """A decision made in process from a bundle at ``policy_version``."""
        made = cls(*_verdict(decided))  # positional, in field order: this is the local hot path
        made.policy_version = policy_version
        made.local = True
        return made


@dataclass(frozen=True, slots=True)
class KillSwitchCommand:
    """A verified kill-switch command, as handed to ``on_kill_switch`` handlers."""

    command_id: str
    agent_id: str
    command: str
    reason: str
    issued_at: str
    sequence: int
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> KillSwitchCommand:
        """From the stream's signed JSON (already verified)."""
        return cls(
            command_id=str(body["command_id"]),
            agent_id=str(body["agent_id"]),
            command=str(body["command"]),
            reason=str(body.get("reason") or ""),
            issued_at=str(body.get("issued_at") or ""),
            sequence=int(body.get("sequence") or 0),
            raw=dict(body),
        )
