"""Agent-plane authentication for the kill switch's own routes, where a terminated agent is still heard.

A terminated agent must be able to fetch its pending TERMINATE and acknowledge it with a token it already
holds (unexpired, correctly signed, not revoked). Every other check is the shared authenticator's.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from aigos.core.agents import AgentStatus
from aigos.server.deps import RuntimeDep
from aigos.server.errors import Forbidden, Unauthenticated
from aigos.server.identity.agent_auth import AgentPrincipal, agent_bearer, authenticator, issuer_for

LISTEN_SCOPE = "killswitch:listen"


async def get_listener(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(agent_bearer)],
) -> AgentPrincipal:
    """The calling agent, terminated ones included; 401 otherwise, 403 without ``killswitch:listen``."""
    if credentials is None or not credentials.credentials:
        raise Unauthenticated(
            "Send `Authorization: Bearer <agent token>`.",
            code="UNAUTHENTICATED",
            headers={"WWW-Authenticate": 'Bearer realm="aigos"'},
        )
    token = credentials.credentials
    try:
        principal = await authenticator.authenticate(runtime, token, issuer_for(request, runtime.settings))
    except Unauthenticated as exc:
        # The authenticator refuses on status only after the signature, issuer, revocation and tenant
        # checks passed and the verified claims were cached: those claims are the terminated agent's.
        claims = runtime.token_cache.get(token, time.time())
        if exc.instance_code != "AGENT_TERMINATED" or claims is None:
            raise
        principal = AgentPrincipal(
            agent_id=uuid.UUID(str(claims["sub"])),
            tenant_id=uuid.UUID(str(claims["aud"])),
            status=AgentStatus.TERMINATED,
            claims=claims,
        )
    if LISTEN_SCOPE not in str(principal.claims.get("scope", "")).split():
        raise Forbidden(f"The token lacks the `{LISTEN_SCOPE}` scope.", code="INSUFFICIENT_SCOPE")
    request.state.tenant_id = str(principal.tenant_id)
    return principal


ListenerDep = Annotated[AgentPrincipal, Depends(get_listener)]
