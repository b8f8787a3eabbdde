"""Routes of the AGNTCY alignment: export an agent as a signed OASF record, register one from a record."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, Field

from aigos.server.audit.events import by
from aigos.server.deps import RuntimeDep, SessionDep
from aigos.server.identity import agents, agntcy
from aigos.server.identity.agent_auth import issuer_for
from aigos.server.identity.schemas import AgentOut
from aigos.server.routing import ValidatedRoute
from aigos.server.tenancy.deps import require_tenant
from aigos.server.tenancy.principal import Principal

router = APIRouter(prefix="/v1/agents", tags=["agents"], route_class=ValidatedRoute)

Reader = Annotated[Principal, Depends(require_tenant("agents:read"))]
Writer = Annotated[Principal, Depends(require_tenant("agents:write"))]


class SignedRecord(BaseModel):
    """An agent's OASF record and its signature."""

    record: dict[str, Any] = Field(description=f"The OASF record (schema {agntcy.SCHEMA_VERSION}).")
    signature: str = Field(
        description="Compact JWS over the record's canonical JSON (sorted keys, no whitespace, UTF-8), "
        "signed with the token-signing key its `kid` names in `/.well-known/jwks.json`."
    )


def _tenant(principal: Principal) -> uuid.UUID:
    assert principal.tenant_id is not None
    return principal.tenant_id


@router.get("/{agent_id}/oasf", response_model=SignedRecord, summary="Export an agent as an OASF record")
async def export_oasf(
    agent_id: uuid.UUID, request: Request, runtime: RuntimeDep, session: SessionDep, principal: Reader
) -> SignedRecord:
    """The agent as an AGNTCY OASF record, signed so a directory can verify it against the JWKS."""
    agent = await agents.get(session, _tenant(principal), agent_id)
    record = agntcy.to_record(agent, issuer_for(request, runtime.settings))
    return SignedRecord(record=record, signature=agntcy.sign_record(record, runtime.keys.active))


@router.post(
    "/import/oasf",
    response_model=AgentOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create an agent from an OASF record",
)
async def import_oasf(
    record: agntcy.OasfRecord, runtime: RuntimeDep, session: SessionDep, principal: Writer
) -> AgentOut:
    """Register the agent an OASF record describes (skills become tool patterns; no credential yet).

    Ids, status, creation time and parent are assigned here, never read from the record.
    """
    tenant_id = _tenant(principal)
    spec = agntcy.from_record(record)
    agent = await agents.create(
        session, tenant_id, principal.plan_tier, spec, runtime.settings.max_lineage_depth
    )
    runtime.usage.count(tenant_id, "agent_registrations")
    data = {"name": agent.name, "agent_type": agent.agent_type, "parent_id": None, "source": "oasf"}
    await runtime.events.record(by(principal, "agent.created", data, agent_id=str(agent.id)), session)
    return agents.to_out(agent, runtime.agent_seen.pending(agent.id))
