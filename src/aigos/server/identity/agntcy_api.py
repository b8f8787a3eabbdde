"""Routes of the AGNTCY alignment: export an agent as a signed OASF record, register one from a record."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, Field

from aigos.server.deps import EventsDep, SessionDep, SettingsDep, UsageDep
from aigos.server.identity import agents, agntcy, registration
from aigos.server.identity.agent_auth import issuer_for
from aigos.server.identity.deps import AgentSeenDep, SigningKeysDep
from aigos.server.identity.schemas import AgentOut
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.tenancy.deps import require_tenant

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
    agent_id: uuid.UUID,
    request: Request,
    settings: SettingsDep,
    keys: SigningKeysDep,
    session: SessionDep,
    principal: Reader,
) -> SignedRecord:
    """The agent as an AGNTCY OASF record, signed so a directory can verify it against the JWKS."""
    agent = await agents.get(session, _tenant(principal), agent_id)
    record = agntcy.to_record(agent, issuer_for(request, settings))
    return SignedRecord(record=record, signature=agntcy.sign_record(record, keys.active))


@router.post(
    "/import/oasf",
    response_model=AgentOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create an agent from an OASF record",
)
async def import_oasf(
    record: agntcy.OasfRecord,
    settings: SettingsDep,
    events: EventsDep,
    usage: UsageDep,
    seen: AgentSeenDep,
    session: SessionDep,
    principal: Writer,
) -> AgentOut:
    """Register the agent an OASF record describes (skills become tool patterns; no credential yet).

    Ids, status, creation time and parent are assigned here, never read from the record.
    """
    spec = agntcy.from_record(record)
    agent = await registration.create(
        session, events, usage, principal, spec, max_depth=settings.max_lineage_depth, source="oasf"
    )
    return agents.to_out(agent, seen.pending(agent.id))
