"""Agent-plane authentication for the kill switch's own routes, where a terminated agent is still heard.

A terminated agent must be able to fetch its pending TERMINATE and acknowledge it with a token it already
holds (unexpired, correctly signed, not revoked). Every other check is the shared authenticator's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from aigos.server.identity.agent_auth import AgentPrincipal, agent_scope

ListenerDep = Annotated[AgentPrincipal, Depends(agent_scope("killswitch:listen", terminated_too=True))]
