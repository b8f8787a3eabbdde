"""Who may report telemetry: an agent with a valid token and the ``telemetry:write`` scope, terminated
agents included, so the outcome of the calls an agent made before its TERMINATE is not lost."""

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

SCOPE = "telemetry:write"


async def get_reporter(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(agent_bearer)],
) -> AgentPrincipal:
    """The reporting agent; 401 without a valid token, 403 without ``telemetry:write``."""
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
        # Refused on status only after signature, issuer, revocation and tenant passed and the verified
        # claims were cached: a terminated agent's last report is still heard (and marked as its own).
        claims = runtime.token_cache.get(token, time.time())
        if exc.instance_code != "AGENT_TERMINATED" or claims is None:
            raise
        principal = AgentPrincipal(
            agent_id=uuid.UUID(str(claims["sub"])),
            tenant_id=uuid.UUID(str(claims["aud"])),
            status=AgentStatus.TERMINATED,
            claims=claims,
        )
    if SCOPE not in str(principal.claims.get("scope", "")).split():
        raise Forbidden(f"The token lacks the `{SCOPE}` scope.", code="INSUFFICIENT_SCOPE")
    request.state.tenant_id = str(principal.tenant_id)
    return principal


ReporterDep = Annotated[AgentPrincipal, Depends(get_reporter)]
