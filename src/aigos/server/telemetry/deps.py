"""Who may report telemetry: an agent with a valid token and the ``telemetry:write`` scope, terminated
agents included, so the outcome of the calls an agent made before its TERMINATE is not lost."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from aigos.server.identity.agent_auth import AgentPrincipal, agent_scope

ReporterDep = Annotated[AgentPrincipal, Depends(agent_scope("telemetry:write", terminated_too=True))]
