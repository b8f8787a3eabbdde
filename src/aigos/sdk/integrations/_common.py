"""What the integrations share: reading check values from a tool's arguments, and denial messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aigos.sdk.errors import AgentPaused, AgentTerminated, AigosError, PolicyDenied

#: A fixed value, or a function of the tool call's arguments (a mapping) returning it.
FromArgs = str | Callable[[Mapping[str, Any]], str | None] | None
CostFromArgs = float | Callable[[Mapping[str, Any]], float | None] | None

#: Errors that mean "this call may not run": integrations may hand them to the model as a message.
REFUSALS = (PolicyDenied, AgentTerminated, AgentPaused)


def from_args(value: Any) -> Any:
    """A guard value for ``Guarded``: called with the tool's argument mapping as its only argument."""
    if callable(value):
        return lambda arguments, *_: value(arguments)
    return value


def refusal_message(error: AigosError) -> str:
    """What a model sees instead of the tool's output when the call was refused."""
    if isinstance(error, PolicyDenied):
        rule = f" (rule {error.matched_rule})" if error.matched_rule else ""
        return f"Denied by AIGOS policy: {error.code}: {error.reason}{rule}"
    return f"Refused by AIGOS: {error.code}: {error.message}"
