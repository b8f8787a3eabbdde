"""OpenAI Agents SDK: ``guard_function_tool(tool)`` checks every invocation of a ``FunctionTool`` (from
``@function_tool``) before it runs, and reports its outcome.

    from agents import function_tool
    from aigos.sdk.integrations.openai_agents import guard_function_tool

    @function_tool
    def web_search(query: str) -> str: ...

    web_search = guard_function_tool(web_search)

The tool's ``on_invoke_tool`` is wrapped on a copy. A denial raises ``PolicyDenied`` or, with
``on_denied="message"`` (the default here: the Runner hands tool output to the model), returns the
reason as the tool's output so the model can adapt without the tool running.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from aigos.sdk._core import DEFAULT_ACTION
from aigos.sdk.guard import AnyClient, Guarded
from aigos.sdk.integrations._common import REFUSALS, CostFromArgs, FromArgs, from_args, refusal_message

if TYPE_CHECKING:
    from agents import FunctionTool


def _arguments(raw: str) -> Mapping[str, Any]:
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, Mapping) else {}


def guard_function_tool(
    tool: FunctionTool,
    *,
    client: AnyClient | None = None,
    action: str = DEFAULT_ACTION,
    resource: FromArgs = None,
    domain: FromArgs = None,
    cost: CostFromArgs = None,
    on_denied: Literal["raise", "message"] = "message",
) -> FunctionTool:
    """A copy of ``tool`` whose every invocation is checked first (tool name = the tool's ``name``)."""
    spec = Guarded(
        lambda: None, tool.name, action, from_args(resource), from_args(domain), from_args(cost), client
    )
    invoke = tool.on_invoke_tool

    async def on_invoke_tool(context: Any, raw_arguments: str) -> Any:
        try:
            aigos, decision = await spec.aadmit((_arguments(raw_arguments),), {})
        except REFUSALS as refused:
            if on_denied == "message":
                return refusal_message(refused)
            raise
        started = time.perf_counter()
        try:
            result = await invoke(context, raw_arguments)
        except BaseException as exc:
            spec.report(aigos, decision, started, exc)
            raise
        spec.report(aigos, decision, started, None)
        return result

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)
