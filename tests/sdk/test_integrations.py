"""Integrations against the real libraries (no LLM calls): LangChain tools, OpenAI Agents SDK function
tools and an MCP server reached through the mcp library's in-process client, each against a live server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from aigos.sdk import AigosClient, AsyncAigosClient, PolicyDenied
from tests.sdk.live import LiveServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def aigos(live: LiveServer) -> Any:
    """A sync client acting as an agent that may use ``web_search`` on ``*.company.com`` only."""
    client = AigosClient(api_key=live.api_key, base_url=live.base_url, set_default=False)
    client.register(name="integrations", capabilities={"tools": ["web_search"], "domains": ["*.company.com"]})
    yield client
    client.close()


def test_langchain_tools(aigos: AigosClient) -> None:
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import tool

    from aigos.sdk.integrations.langchain import guard_tool

    ran: list[str] = []

    @tool
    def web_search(query: str, site: str = "docs.company.com") -> str:
        """Search the web."""
        ran.append(query)
        return f"results for {query}"

    @tool
    def shell(command: str) -> str:
        """Run a shell command."""
        ran.append(command)
        return "ran"

    search = guard_tool(web_search, client=aigos, domain=lambda args: args.get("site"))
    assert search.name == "web_search"
    assert search.invoke({"query": "aigos"}) == "results for aigos"
    with pytest.raises(PolicyDenied, match="evil"):
        search.invoke({"query": "x", "site": "evil.org"})

    # As an agent calls it: a tool call in, a ToolMessage out.
    message = search.invoke(
        {"type": "tool_call", "name": "web_search", "id": "call-1", "args": {"query": "q"}}
    )
    assert isinstance(message, ToolMessage)
    assert message.content == "results for q"

    guarded_shell = guard_tool(shell, client=aigos, on_denied="message")
    assert guarded_shell.invoke({"command": "ls"}).startswith("Denied by AIGOS policy: CAPABILITY_DENIED")
    assert asyncio.run(guarded_shell.ainvoke({"command": "ls"})).startswith("Denied by AIGOS policy")
    answer = guarded_shell.invoke(
        {"type": "tool_call", "name": "shell", "id": "call-2", "args": {"command": "ls"}}
    )
    assert isinstance(answer, ToolMessage)
    assert (answer.tool_call_id, answer.status) == ("call-2", "error")
    assert "CAPABILITY_DENIED" in str(answer.content)
    assert shell.invoke({"command": "unguarded original"}) == "ran"  # the original is left untouched
    assert ran == ["aigos", "q", "unguarded original"]


def test_openai_agents_function_tools(live: LiveServer) -> None:
    from agents import FunctionTool, function_tool
    from agents.tool_context import ToolContext

    from aigos.sdk.integrations.openai_agents import guard_function_tool

    async def scenario() -> None:
        async with AsyncAigosClient(
            api_key=live.api_key, base_url=live.base_url, set_default=False
        ) as client:
            await client.register(name="openai-agent", capabilities={"tools": ["web_search"]})
            ran: list[str] = []

            @function_tool
            def web_search(query: str) -> str:
                """Search the web."""
                ran.append(query)
                return f"results for {query}"

            @function_tool
            def shell(command: str) -> str:
                """Run a shell command."""
                ran.append(command)
                return "ran"

            search = guard_function_tool(web_search, client=client)
            denied_shell = guard_function_tool(shell, client=client)
            raising_shell = guard_function_tool(shell, client=client, on_denied="raise")
            assert isinstance(search, FunctionTool)
            assert search.params_json_schema == web_search.params_json_schema

            async def call(tool: FunctionTool, arguments: dict[str, Any]) -> Any:
                raw = json.dumps(arguments)
                context = ToolContext(
                    context=None, tool_name=tool.name, tool_call_id="call-1", tool_arguments=raw
                )
                return await tool.on_invoke_tool(context, raw)

            assert await call(search, {"query": "aigos"}) == "results for aigos"
            assert (await call(denied_shell, {"command": "ls"})).startswith(
                "Denied by AIGOS policy: CAPABILITY"
            )
            with pytest.raises(PolicyDenied):
                await call(raising_shell, {"command": "ls"})
            assert ran == ["aigos"]

    asyncio.run(scenario())


def test_mcp_server_tools_with_the_callers_identity(live: LiveServer, aigos: AigosClient) -> None:
    from mcp import Client
    from mcp.server.mcpserver import MCPServer

    from aigos.sdk.integrations.mcp import META_KEY, guard_mcp_server

    # The caller: another agent, allowed ``shell`` but not ``web_search``.
    with AigosClient(api_key=live.api_key, base_url=live.base_url, set_default=False) as registrar:
        caller = registrar.register(name="mcp-caller", capabilities={"tools": ["shell"]})

    server = MCPServer("research-tools")
    ran: list[str] = []

    @server.tool()
    def web_search(query: str) -> str:
        """Search the web."""
        ran.append(f"search:{query}")
        return f"results for {query}"

    @server.tool()
    def shell(command: str) -> str:
        """Run a command."""
        ran.append(f"shell:{command}")
        return "ran"

    middleware = guard_mcp_server(server, client=aigos)

    async def scenario() -> None:
        async with Client(server) as mcp:
            own = await mcp.call_tool("web_search", {"query": "aigos"})
            assert not own.is_error
            assert "results for aigos" in own.content[0].text  # type: ignore[union-attr]

            refused = await mcp.call_tool("shell", {"command": "ls"})
            assert refused.is_error
            assert "CAPABILITY_DENIED" in refused.content[0].text  # type: ignore[union-attr]

            as_caller = {META_KEY: f"Bearer {caller.identity_token}"}
            allowed = await mcp.call_tool("shell", {"command": "ls"}, meta=as_caller)  # type: ignore[arg-type]
            assert not allowed.is_error
            denied = await mcp.call_tool("web_search", {"query": "x"}, meta=as_caller)  # type: ignore[arg-type]
            assert denied.is_error
        await middleware.aclose()

    asyncio.run(scenario())
    assert ran == ["search:aigos", "shell:ls"]
