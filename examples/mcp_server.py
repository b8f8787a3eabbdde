"""MCP: every tool call of an MCP server checked by AIGOS, as the calling agent (needs ``pip install mcp``).

    AIGOS_API_KEY=aigos_sk_test_... python examples/mcp_server.py

The server acts as its own agent unless a call carries an agent token (``Authorization: Bearer`` over
HTTP, or ``_meta["io.aigos/authorization"]``): then the check is made as that agent. Here the mcp
library's in-process client calls it; serve it over HTTP with ``server.run("streamable-http")``.
"""

from __future__ import annotations

import asyncio
import os

from mcp import Client
from mcp.server.mcpserver import MCPServer

from aigos.sdk import AsyncAigosClient
from aigos.sdk.integrations.mcp import META_KEY, guard_mcp_server

server = MCPServer("research-tools")


@server.tool()
def web_search(query: str) -> str:
    """Search the web."""
    return f"results for {query!r}"


@server.tool()
def shell(command: str) -> str:
    """Run a shell command."""
    return "ran"


async def main() -> None:
    async with AsyncAigosClient(api_key=os.environ.get("AIGOS_API_KEY")) as aigos:
        await aigos.register(name="mcp-server", capabilities={"tools": ["web_search"]})
        guard_mcp_server(server, client=aigos)
        async with Client(server) as mcp:
            for name, arguments in (("web_search", {"query": "AI governance"}), ("shell", {"command": "ls"})):
                result = await mcp.call_tool(name, arguments)
                print(f"as the server: {name}: error={result.is_error}: {result.content[0].text}")  # type: ignore[union-attr]

        # A caller with its own identity (registered with the admin key here; normally the caller's token).
        async with AsyncAigosClient(api_key=os.environ.get("AIGOS_API_KEY"), set_default=False) as registrar:
            agent = await registrar.register(name="mcp-caller", capabilities={"tools": ["shell"]})
        async with Client(server) as mcp:
            meta = {META_KEY: f"Bearer {agent.identity_token}"}
            result = await mcp.call_tool("shell", {"command": "ls"}, meta=meta)  # type: ignore[arg-type]
            print(f"as the caller: shell: error={result.is_error}: {result.content[0].text}")  # type: ignore[union-attr]


if __name__ == "__main__":
    asyncio.run(main())
