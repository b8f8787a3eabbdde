"""The SDK's exceptions: each carries the server's stable ``code`` so callers can branch on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aigos.sdk.models import Decision


class AigosError(Exception):
    """Base of every error the SDK raises; ``code`` is the server's (or the SDK's) machine-readable code."""

    code: str = "AIGOS_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.status = status
        self.problem = problem or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigurationError(AigosError):
    """The client lacks something it needs (a base URL, credentials, a registered identity)."""

    code = "CONFIGURATION_ERROR"


class AigosUnavailable(AigosError):
    """The server could not be reached or kept failing (timeouts, connection errors, 5xx after retries)."""

    code = "SERVER_UNAVAILABLE"


class AuthenticationError(AigosError):
    """The server refused the credentials (401): an unknown key, a bad secret, a revoked token."""

    code = "UNAUTHENTICATED"


class PolicyDenied(AigosError):
    """A guarded call was refused by policy; ``decision`` has the reason and the matched rule."""

    code = "POLICY_DENIED"

    def __init__(self, decision: Decision) -> None:
        message = decision.reason or f"denied ({decision.code})"
        super().__init__(message, code=decision.code or type(self).code)
        self.decision = decision

    @property
    def reason(self) -> str | None:
        """Why the policy refused the call."""
        return self.decision.reason

    @property
    def matched_rule(self) -> str | None:
        """The rule that refused it, if a rule did."""
        return self.decision.matched_rule


class AgentTerminated(AigosError):
    """The agent was terminated by the kill switch: no guarded call runs any more."""

    code = "TERMINATED"


class AgentPaused(AigosError):
    """The agent is paused by the kill switch (raised instead of waiting when so configured)."""

    code = "PAUSED"
