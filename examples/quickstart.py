"""The seed's SDK scenario in Python: register an agent, guard a tool, obey the kill switch.

Start a server (``aigos serve``), create a tenant and copy its admin key (see the README), then:

    AIGOS_API_KEY=aigos_sk_test_... AIGOS_BASE_URL=http://127.0.0.1:8000 python examples/quickstart.py

The agent searches in a loop. Trigger the kill switch for it (the agent id is printed):

    curl -X POST $AIGOS_BASE_URL/v1/kill-switch/trigger -H "Authorization: Bearer $AIGOS_API_KEY" \\
      -H 'Content-Type: application/json' -d '{"agent_id": "<id>", "command": "TERMINATE", "reason": "demo"}'

PAUSE holds the loop until RESUME; TERMINATE stops it at once and ends the process.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from aigos.sdk import AgentTerminated, AigosClient, KillSwitchCommand, PolicyDenied, guard

# Configuration comes from the environment: AIGOS_API_KEY, AIGOS_BASE_URL (default http://127.0.0.1:8000).
# The agent's AIGRC asset card sits beside this file: its capabilities bound what the agent may ask for.
aigos = AigosClient(
    api_key=os.environ.get("AIGOS_API_KEY"),
    asset_card=os.environ.get(
        "AIGOS_ASSET_CARD", str(Path(__file__).with_name("research-assistant.aigrc.yaml"))
    ),
)

# Register the agent and get its identity (client id, one-time secret, runtime identity token).
identity = aigos.register(
    name="research-assistant",
    capabilities={
        "tools": ["web_search", "file_read"],
        "domains": ["*.company.com"],
        "maxBudget": 10.00,
    },
)
print(f"registered agent {identity.agent_id}", flush=True)


class ResearchAgent:
    """A tiny agent whose one tool is guarded: the policy check happens before every call."""

    @guard(tool="web_search", domain="search.company.com")
    def search(self, query: str) -> list[str]:
        return [f"result for {query!r}"]

    @guard(tool="shell")
    def shell(self, command: str) -> str:
        return "never runs: shell is not among the agent's capabilities"


def on_command(command: KillSwitchCommand) -> None:
    """Called after the command was verified, obeyed and acknowledged."""
    print(f"Received kill switch: {command.command} ({command.reason})", flush=True)
    if command.command == "TERMINATE":
        aigos.shutdown()  # flush telemetry, then SIGTERM to this process


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Leave through SystemExit so ``finally`` blocks and atexit hooks run."""
    sys.exit(0)


def main() -> int:
    signal.signal(signal.SIGTERM, on_sigterm)
    aigos.on_kill_switch(on_command)
    agent = ResearchAgent()
    try:
        agent.shell("rm -rf /")
    except PolicyDenied as denied:
        print(f"denied as expected: {denied.code}: {denied.reason}", flush=True)
    calls = 0
    try:
        while True:
            agent.search(f"query {calls}")
            calls += 1
            if calls % 20 == 1:
                print(f"{calls} guarded calls", flush=True)
            time.sleep(0.05)
    except AgentTerminated as stopped:
        print(f"stopped: {stopped}", flush=True)
    finally:
        print(f"done after {calls} guarded calls", flush=True)
        aigos.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
