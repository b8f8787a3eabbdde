"""The AIGOS Python SDK: register an agent, guard every tool call, obey the kill switch.

    from aigos.sdk import AigosClient, guard

    aigos = AigosClient(api_key=os.environ["AIGOS_API_KEY"], asset_card_id="aigrc-2026-0a1b2c3d")
    identity = aigos.register(name="research-assistant", capabilities={"tools": ["web_search"]})

    @guard(tool="web_search")
    def search(query: str) -> list[str]: ...

    aigos.on_kill_switch()  # TERMINATE stops guarded calls and the process; PAUSE holds them

Light: needs only httpx, cryptography and orjson (``pip install aigos``); nothing from the server.
"""

from aigos.sdk.aclient import AsyncAigosClient
from aigos.sdk.client import AigosClient
from aigos.sdk.config import ClientConfig
from aigos.sdk.defaults import configure, default_client, set_default_client
from aigos.sdk.errors import (
    AgentPaused,
    AgentTerminated,
    AigosError,
    AigosUnavailable,
    AuthenticationError,
    ConfigurationError,
    PolicyDenied,
)
from aigos.sdk.guard import guard
from aigos.sdk.models import Decision, Identity, KillSwitchCommand

__all__ = [
    "AgentPaused",
    "AgentTerminated",
    "AigosClient",
    "AigosError",
    "AigosUnavailable",
    "AsyncAigosClient",
    "AuthenticationError",
    "ClientConfig",
    "ConfigurationError",
    "Decision",
    "Identity",
    "KillSwitchCommand",
    "PolicyDenied",
    "configure",
    "default_client",
    "guard",
    "set_default_client",
]
