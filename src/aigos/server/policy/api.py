"""Routes of the policy context: policy CRUD with versions (admin plane), check and bundle (agent plane),
simulation, and the keys that sign bundles. Each parses, calls the context's services, and answers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter

from aigos.server.deps import EventsDep, SessionDep, SettingsDep
from aigos.server.errors import BadRequest, NotFound
from aigos.server.identity.agent_auth import (
    AgentPrincipal,
    agent_scope,
)
from aigos.server.policy import bundles, service, simulation
from aigos.server.policy.check_endpoint import answer_check
from aigos.server.policy.deps import BudgetsDep, PolicyStateDep
from aigos.server.policy.schemas import (
    CheckIn,
    CheckOut,
    PolicyIn,
    PolicyOut,
    PolicyPage,
    PolicyVersionOut,
    PublicKeys,
    SignedBundle,
    SimulateIn,
    SimulateOut,
)
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.tenancy.deps import require_tenant
from aigos.server.tenancy.plans import plan_of

router = APIRouter(prefix="/v1/policies", tags=["policies"], route_class=ValidatedRoute)

Checker = Annotated[AgentPrincipal, Depends(agent_scope("policies:check"))]
Reader = Annotated[Principal, Depends(require_tenant("policies:read"))]
Writer = Annotated[Principal, Depends(require_tenant("policies:write"))]
PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]


def _tenant(principal: Principal) -> uuid.UUID:
    assert principal.tenant_id is not None
    return principal.tenant_id


# -- the agent plane (static paths first: `/{policy_id}` would otherwise swallow them) -----------------


_CHECK_IN: TypeAdapter[CheckIn] = TypeAdapter(CheckIn)


@router.post(
    "/check",
    response_model=CheckOut,
    summary="Check an action (agent token)",
    responses={503: {"description": "Policy state or budgets unavailable (fail closed); retry."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CheckIn"}}},
        },
        "security": [{"HTTPBearer": []}],
    },
)
async def check(request: Request) -> Response:
    """May the calling agent do this? Answered from memory: no database round trip once warm.

    The chain: kill switch → capability → budget → domain patterns → custom rules; the first denial wins
    and deny overrides allow. A denial is an answer (`allowed: false` with a `code`), not an HTTP error.
    """
    # Answered by ``CheckEndpoint`` before routing; declared here so it is documented and routable alike.
    return await answer_check(request, edge_checked=True)


@router.get(
    "/bundle",
    response_model=SignedBundle,
    summary="Get the agent's signed policy bundle (agent token)",
    responses={304: {"description": "Not modified (`If-None-Match` matched the ETag)."}},
)
async def get_bundle(
    state: PolicyStateDep,
    settings: SettingsDep,
    agent: Checker,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The policies that apply to the calling agent, signed, for local evaluation with `aigos.core.policy`.

    Verify the signature against `GET /v1/policies/keys`. Budgets are not in the bundle: a check with a
    cost must still go to the server, which reserves it.
    """
    served = await bundles.signed_bundle(state, settings.pepper, agent, if_none_match)
    if served.body is None:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": served.etag})
    headers = {
        "ETag": served.etag,
        "Cache-Control": "no-cache",
        "Content-Length": str(sum(map(len, served.body))),
    }
    return StreamingResponse(_chunks(served.body), media_type="application/json", headers=headers)


#: A response body is written this much at a time: a write of tens of MiB at once holds the loop.
CHUNK_BYTES = 1 << 20


async def _chunks(pieces: list[bytes]) -> AsyncIterator[memoryview]:
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), CHUNK_BYTES):
            yield view[start : start + CHUNK_BYTES]


@router.get("/keys", response_model=PublicKeys, summary="List bundle-signing keys")
async def list_keys(settings: SettingsDep) -> dict[str, Any]:
    """The public keys that sign policy bundles (public: an SDK pins or fetches them)."""
    return bundles.public_keys(settings.pepper)


@router.post("/simulate", response_model=SimulateOut, summary="Simulate a check")
async def simulate(
    body: SimulateIn, state: PolicyStateDep, budgets: BudgetsDep, session: SessionDep, principal: Reader
) -> dict[str, Any]:
    """Evaluate a hypothetical request against the saved policies, drafts, or both, with the full trace.

    Nothing is spent and nothing is recorded: budgets are read as they stand. Drafts are held to the
    plan's limits on saved policies, and their number to its `drafts`.
    """
    plan = plan_of(principal.plan_tier)
    return await simulation.simulate(state, budgets, session, _tenant(principal), plan, body)


# -- the admin plane ---------------------------------------------------------------------------------


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


@router.post("", response_model=PolicyOut, status_code=status.HTTP_201_CREATED, summary="Create a policy")
async def create_policy(
    spec: PolicyIn,
    response: Response,
    events: EventsDep,
    state: PolicyStateDep,
    session: SessionDep,
    principal: Writer,
) -> PolicyOut:
    """Save a policy (version 1). Every replica enforces it within a second.

    The tenant's plan limits policies, rules and document sizes (`POLICY_LIMIT_EXCEEDED`, 413 for one
    document too large, 422 for a tenant total).
    """
    tenant_id = _tenant(principal)
    plan = plan_of(principal.plan_tier)
    policy, version = await service.create(session, tenant_id, spec, principal.actor_id, plan)
    await service.changed(events, state, session, principal, "policy.created", policy, version)
    response.headers.update(_etag(policy.version))
    return service.to_out(policy)


@router.get("", response_model=PolicyPage, summary="List policies")
async def list_policies(
    session: SessionDep,
    principal: Reader,
    page: PageNo = 1,
    limit: Limit = 20,
    agent_id: Annotated[uuid.UUID | None, Query(description="Only policies targeting this agent.")] = None,
    mode: Annotated[str | None, Query(pattern="^(enforce|dry_run)$")] = None,
    enabled: bool | None = None,
) -> PolicyPage:
    """The tenant's policies, most recently changed first."""
    rows, total = await service.page(
        session, _tenant(principal), page=page, limit=limit, agent_id=agent_id, mode=mode, enabled=enabled
    )
    return PolicyPage(policies=[service.to_out(row) for row in rows], total=total, page=page, limit=limit)


@router.get("/{policy_id}", response_model=PolicyOut, summary="Get a policy")
async def get_policy(
    policy_id: uuid.UUID, response: Response, session: SessionDep, principal: Reader
) -> PolicyOut:
    """The policy at its current version (`ETag` is the version, for `If-Match` on `PUT`)."""
    policy = await service.get(session, _tenant(principal), policy_id)
    response.headers.update(_etag(policy.version))
    return service.to_out(policy)


@router.put("/{policy_id}", response_model=PolicyOut, summary="Replace a policy")
async def replace_policy(
    policy_id: uuid.UUID,
    spec: PolicyIn,
    request: Request,
    response: Response,
    events: EventsDep,
    state: PolicyStateDep,
    session: SessionDep,
    principal: Writer,
) -> PolicyOut:
    """Save a new version; the previous ones stay readable up to the plan's `versions_kept`.

    `If-Match: "<version>"` guards lost updates.
    """
    policy, version = await service.replace(
        session,
        _tenant(principal),
        policy_id,
        spec,
        principal.actor_id,
        plan_of(principal.plan_tier),
        _if_match(request),
    )
    await service.changed(events, state, session, principal, "policy.updated", policy, version)
    response.headers.update(_etag(policy.version))
    return service.to_out(policy)


def _if_match(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise BadRequest('If-Match must be a policy version ETag, such as "3".', code="INVALID_IF_MATCH")
    return int(text)


@router.delete("/{policy_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a policy")
async def delete_policy(
    policy_id: uuid.UUID, events: EventsDep, state: PolicyStateDep, session: SessionDep, principal: Writer
) -> Response:
    """Stop enforcing the policy; its versions (and a final `deleted` one) stay readable."""
    policy, version = await service.delete(
        session, _tenant(principal), policy_id, principal.actor_id, plan_of(principal.plan_tier)
    )
    await service.changed(events, state, session, principal, "policy.deleted", policy, version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{policy_id}/versions", response_model=list[PolicyVersionOut], summary="List a policy's versions"
)
async def list_versions(
    policy_id: uuid.UUID, session: SessionDep, principal: Reader
) -> list[PolicyVersionOut]:
    """The kept versions (the plan's `versions_kept` newest), oldest first, including after deletion."""
    return await service.versions(session, _tenant(principal), policy_id)


@router.get("/{policy_id}/versions/{version}", response_model=PolicyVersionOut, summary="Get one version")
async def get_version(
    policy_id: uuid.UUID, version: Annotated[int, Path(ge=1)], session: SessionDep, principal: Reader
) -> PolicyVersionOut:
    """One saved version of the policy."""
    for found in await service.versions(session, _tenant(principal), policy_id):
        if found.version == version:
            return found
    raise NotFound(f"Policy {policy_id} has no version {version}.", code="POLICY_VERSION_NOT_FOUND")
