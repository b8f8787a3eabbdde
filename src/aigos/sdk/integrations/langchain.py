"""LangChain: ``guard_tool(tool)`` checks every invocation of a ``BaseTool`` (``@tool`` functions,
``StructuredTool``, custom subclasses) before it runs, and reports its outcome.

    from langchain_core.tools import tool
    from aigos.sdk.integrations.langchain import guard_tool

    @tool
    def web_search(query: str) -> str: ...

    web_search = guard_tool(web_search, domain="api.search.com")

Every path into a tool (``invoke``, ``ainvoke``, ``run``, ``arun``, tool calls from an agent) goes
through ``run``/``arun``, so those are wrapped on a copy of the tool; the original is left untouched.
A denial raises ``PolicyDenied`` or, with ``on_denied="message"``, becomes the tool's output so the
model can adapt.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aigos.sdk._core import DEFAULT_ACTION
from aigos.sdk.errors import AigosError
from aigos.sdk.guard import AnyClient, Guarded
from aigos.sdk.integrations._common import REFUSALS, CostFromArgs, FromArgs, from_args, refusal_message

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

ToolT = TypeVar("ToolT", bound="BaseTool")


def _arguments(tool_input: Any) -> Mapping[str, Any]:
    if isinstance(tool_input, Mapping):
        args = tool_input.get("args")
        if tool_input.get("type") == "tool_call" and isinstance(args, Mapping):
            return args
        return tool_input
    return {"input": tool_input}


def _refusal(refused: AigosError, kwargs: Mapping[str, Any], name: str) -> Any:
    """The denial as the tool's output: a ``ToolMessage`` (status error) when answering a tool call."""
    message = refusal_message(refused)
    tool_call_id = kwargs.get("tool_call_id")
    if not tool_call_id:
        return message
    from langchain_core.messages import ToolMessage

    return ToolMessage(content=message, tool_call_id=tool_call_id, name=name, status="error")


def guard_tool(
    tool: ToolT,
    *,
    client: AnyClient | None = None,
    action: str = DEFAULT_ACTION,
    resource: FromArgs = None,
    domain: FromArgs = None,
    cost: CostFromArgs = None,
    on_denied: Literal["raise", "message"] = "raise",
) -> ToolT:
    """A copy of ``tool`` whose every run is checked (tool name = the tool's ``name``)."""
    spec = Guarded(
        lambda: None, tool.name, action, from_args(resource), from_args(domain), from_args(cost), client
    )
    guarded = tool.model_copy()
    run, arun = guarded.run, guarded.arun

    def guarded_run(tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            aigos, decision = spec.admit((_arguments(tool_input),), {})
        except REFUSALS as refused:
            if on_denied == "message":
                return _refusal(refused, kwargs, guarded.name)
            raise
        started = time.perf_counter()
        try:
            result = run(tool_input, *args, **kwargs)
        except BaseException as exc:
            spec.report(aigos, decision, started, exc)
            raise
        spec.report(aigos, decision, started, None)
        return result

    async def guarded_arun(tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            aigos, decision = await spec.aadmit((_arguments(tool_input),), {})
        except REFUSALS as refused:
            if on_denied == "message":
                return _refusal(refused, kwargs, guarded.name)
            raise
        started = time.perf_counter()
        try:
            result = await arun(tool_input, *args, **kwargs)
        except BaseException as exc:
            spec.report(aigos, decision, started, exc)
            raise
        spec.report(aigos, decision, started, None)
        return result

    # Instance attributes shadow the class's methods; pydantic's __setattr__ would refuse them.
    object.__setattr__(guarded, "run", guarded_run)
    object.__setattr__(guarded, "arun", guarded_arun)
    return guarded
