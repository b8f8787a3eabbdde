"""Integrations with agent frameworks; each imports its framework lazily (the light install has none).

- ``aigos.sdk.integrations.langchain``: ``guard_tool`` for LangChain ``BaseTool`` / ``@tool`` tools.
- ``aigos.sdk.integrations.openai_agents``: ``guard_function_tool`` for OpenAI Agents SDK ``FunctionTool``.
- ``aigos.sdk.integrations.mcp``: ``guard_mcp_server`` for MCP servers (``MCPServer``, mcp 2.x).
"""
