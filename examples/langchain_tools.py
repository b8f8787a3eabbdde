"""LangChain: every tool call checked by AIGOS before it runs (needs ``pip install langchain-core``).

    AIGOS_API_KEY=aigos_sk_test_... python examples/langchain_tools.py

A fake chat model (LangChain's own, no LLM call) asks for two tool calls; the allowed one runs, the one
outside the agent's capabilities comes back to the model as a denial message.
"""

from __future__ import annotations

import os

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from aigos.sdk import AigosClient
from aigos.sdk.integrations.langchain import guard_tool

aigos = AigosClient(api_key=os.environ.get("AIGOS_API_KEY"))
identity = aigos.register(name="langchain-agent", capabilities={"tools": ["web_search"]})
print(f"registered agent {identity.agent_id}")


@tool
def web_search(query: str) -> str:
    """Search the web."""
    return f"results for {query!r}"


@tool
def shell(command: str) -> str:
    """Run a shell command."""
    return "this never runs: shell is not among the agent's capabilities"


tools = {t.name: guard_tool(t, on_denied="message") for t in (web_search, shell)}
model = GenericFakeChatModel(
    messages=iter(
        [
            AIMessage(
                content="",
                tool_calls=[
                    {"name": "web_search", "args": {"query": "AI governance"}, "id": "call-1"},
                    {"name": "shell", "args": {"command": "cat /etc/passwd"}, "id": "call-2"},
                ],
            )
        ]
    )
)
reply = model.invoke("research AI governance")
for call in reply.tool_calls:
    message = tools[call["name"]].invoke({**call, "type": "tool_call"})
    print(f"{call['name']}: {message.content}")
aigos.close()
