"""OpenAI Agents SDK: function tools checked by AIGOS before they run (needs ``pip install openai-agents``).

    AIGOS_API_KEY=aigos_sk_test_... python examples/openai_agents_tools.py

Give the guarded tools to an ``Agent(tools=[...])`` as usual; here they are invoked directly (no LLM call).
"""

from __future__ import annotations

import asyncio
import json
import os

from agents import function_tool
from agents.tool_context import ToolContext

from aigos.sdk import AsyncAigosClient
from aigos.sdk.integrations.openai_agents import guard_function_tool


@function_tool
def web_search(query: str) -> str:
    """Search the web."""
    return f"results for {query!r}"


@function_tool
def shell(command: str) -> str:
    """Run a shell command."""
    return "this never runs: shell is not among the agent's capabilities"


async def main() -> None:
    async with AsyncAigosClient(api_key=os.environ.get("AIGOS_API_KEY")) as aigos:
        identity = await aigos.register(name="openai-agent", capabilities={"tools": ["web_search"]})
        print(f"registered agent {identity.agent_id}")
        tools = [guard_function_tool(web_search), guard_function_tool(shell)]
        # agent = Agent(name="researcher", tools=tools)  -- every call the model makes is checked
        for tool, arguments in zip(tools, [{"query": "AI governance"}, {"command": "ls"}], strict=True):
            raw = json.dumps(arguments)
            context = ToolContext(
                context=None, tool_name=tool.name, tool_call_id="call-1", tool_arguments=raw
            )
            print(f"{tool.name}: {await tool.on_invoke_tool(context, raw)}")


if __name__ == "__main__":
    asyncio.run(main())
