"""Routes of the policy context: policy CRUD with versions (admin plane), check and bundle (agent plane),
simulation, and the keys that sign bundles."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import policy as core
from aigos.core.canonical import canonical
from aigos.core.signing import Signer, b64url, derive_seed
from aigos.server.audit.events import NewEvent, by, current_request_id
from aigos.server.db.commit_hooks import after_commit
from aigos.server.deps import RuntimeDep, SessionDep
from aigos.server.errors import BadRequest, NotFound
from aigos.server.identity import agents as registry
from aigos.server.identity.agent_auth import AgentPrincipal, admit, agent_scope, bearer_token, require_scope
from aigos.server.policy import limits, service
from aigos.server.policy.pieces import in_pieces
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
from aigos.server.policy.state import select_in_pieces
from aigos.server.routing import ValidatedRoute
from aigos.server.runtime import Runtime
from aigos.server.telemetry.schemas import TelemetryEvent
from aigos.server.telemetry.service import reported_events
from aigos.server.tenancy.deps import require_tenant
from aigos.server.tenancy.plans import MAX_BUNDLE_BYTES, plan_of
from aigos.server.tenancy.principal import Principal

router = APIRouter(prefix="/v1/policies", tags=["policies"], route_class=ValidatedRoute)

Checker = Annotated[AgentPrincipal, Depends(agent_scope("policies:check"))]
Reader = Annotated[Principal, Depends(require_tenant("policies:read"))]
Writer = Annotated[Principal, Depends(require_tenant("policies:write"))]
PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]
#: How long a bundle may be used offline before the SDK must fetch it again.
BUNDLE_TTL = timedelta(minutes=5)
T = TypeVar("T")
#: Which event a decision is recorded as.
_EVENT = {None: "policy.checked", core.Code.BUDGET_EXCEEDED.value: "budget.exceeded"}


def _tenant(principal: Principal) -> uuid.UUID:
    assert principal.tenant_id is not None
    return principal.tenant_id


@functools.lru_cache(maxsize=4)
def bundle_signer(pepper: bytes) -> Signer:
    """The Ed25519 key that signs policy bundles, derived from the server secret (same on every replica)."""
    return Signer.from_seed(derive_seed(pepper, "policy-bundle"))


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
    # No FastAPI dependencies or body parameter here: resolving them costs more than the decision.
    started = time.perf_counter()
    runtime: Runtime = request.app.state.runtime
    agent = await admit(request, runtime, bearer_token(request), "policies:check")
    try:
        # Parsed and checked once, at the edge (ValidatedRoute); this reads the request's cache.
        body = _CHECK_IN.validate_python(await request.json())
    except ValidationError as exc:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]) from exc
    carried = _carried(agent, body.telemetry) if body.telemetry else ()
    state = runtime.policy
    state.ensure_live()
    subject = await state.subject(agent.tenant_id, agent.agent_id, agent.status.value, agent.claims)
    policies = await state.policy_set(agent.tenant_id)
    asked = core.Request.of(body.action, body.resource, body.context.model_dump(exclude_none=True))
    effective = await select_in_pieces(policies, subject, body.action, asked)
    decision = core.evaluate(effective, subject, asked, trace=body.trace)
    if decision.needs_rate:
        decision = await runtime.budgets.count_rates(agent.tenant_id, decision)
    if decision.needs_budget:
        decision = await runtime.budgets.settle(agent.tenant_id, decision)
    decision_id = uuid.uuid4()
    _record(runtime, agent, asked, decision, decision_id, policies.version)
    for event in carried:
        # A full queue drops and counts it, as it would a telemetry batch's; the decision still stands.
        runtime.events.enqueue(event)
    answer = decision.to_json()
    answer.update(
        decision_id=str(decision_id),
        policy_version=policies.version,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return Response(orjson.dumps(answer), media_type="application/json")


def _carried(agent: AgentPrincipal, items: list[TelemetryEvent]) -> list[NewEvent]:
    """The outcomes a check carries, as ``POST /v1/telemetry`` would record them; checked before deciding."""
    require_scope(agent, "telemetry:write")
    return reported_events(agent, items, "/telemetry")


def _record(
    runtime: Runtime,
    agent: AgentPrincipal,
    asked: core.Request,
    decision: core.Decision,
    decision_id: uuid.UUID,
    version: int,
) -> None:
    runtime.usage.count(agent.tenant_id, "policy_checks")
    event_type = "policy.checked" if decision.allowed else _EVENT.get(decision.code, "policy.violated")
    data: dict[str, Any] = {
        "decision_id": str(decision_id),
        "action": asked.action,
        "resource": asked.resource,
        "context": asked.context,
        "allowed": decision.allowed,
        "code": decision.code,
        "stage": decision.stage,
        "matched_rule": decision.matched_rule,
        "policy_id": decision.policy_id,
        "budget_remaining": decision.budget_remaining,
        "policy_version": version,
    }
    if decision.would_deny:
        data["would_deny"] = [item.to_json() for item in decision.would_deny]
    aggregate = runtime.policy.aggregates(agent.tenant_id) and not decision.would_deny
    runtime.events.enqueue(
        NewEvent(
            tenant_id=agent.tenant_id,
            event_type=event_type,
            actor_type="agent",
            actor_id=str(agent.agent_id),
            agent_id=str(agent.agent_id),
            data=data,
            outcome="allowed" if decision.allowed else "denied",
            request_id=current_request_id(),
        ),
        aggregate_allowed=aggregate,
    )


@router.get(
    "/bundle",
    response_model=SignedBundle,
    summary="Get the agent's signed policy bundle (agent token)",
    responses={304: {"description": "Not modified (`If-None-Match` matched the ETag)."}},
)
async def get_bundle(
    runtime: RuntimeDep,
    agent: Checker,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The policies that apply to the calling agent, signed, for local evaluation with `aigos.core.policy`.

    Verify the signature against `GET /v1/policies/keys`. Budgets are not in the bundle: a check with a
    cost must still go to the server, which reserves it.
    """
    state = runtime.policy
    state.ensure_live()
    subject = await state.subject(agent.tenant_id, agent.agent_id, agent.status.value, agent.claims)
    policies = await state.policy_set(agent.tenant_id)
    if policies.cached(subject) is None:
        await in_pieces(policies.selecting(subject), freezing=True)
    documents = await in_pieces(policies.encoding(subject))
    # Hashing, joining and signing tens of MiB: in a thread when large (each releases the GIL; nothing is
    # copied but by ``bytes.join``, which does too).
    large = sum(map(len, documents)) > OFF_LOOP_BYTES

    def digest() -> tuple[int, str]:
        hashed, size = hashlib.sha256(), 0
        for piece in core.bundle_content(policies.version, subject, documents):
            hashed.update(piece)
            size += len(piece)
        return size, hashed.hexdigest()[:32]

    size, digested = await _off_loop(large, digest)
    if size > MAX_BUNDLE_BYTES:
        raise limits.bundle_too_large(size, MAX_BUNDLE_BYTES)
    etag = f'"{digested}"'
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    now = datetime.now(UTC).replace(microsecond=0)
    signer = bundle_signer(runtime.settings.pepper)

    def signed() -> list[bytes]:
        payload = b"".join(
            core.signed_payload(
                str(agent.tenant_id),
                policies.version,
                subject,
                documents,
                now.isoformat().replace("+00:00", "Z"),
                (now + BUNDLE_TTL).isoformat().replace("+00:00", "Z"),
            )
        )
        signature = b64url(signer.private_key.sign(payload))  # Signer.sign, over bytes already canonical
        fields = {"key_id": signer.key_id, "alg": "Ed25519", "signature": signature}
        body = {"payload": payload, **{name: canonical(value) for name, value in fields.items()}}
        return core.canonical_object(body)

    body = await _off_loop(large, signed)
    headers = {"ETag": etag, "Cache-Control": "no-cache", "Content-Length": str(sum(map(len, body)))}
    return StreamingResponse(_chunks(body), media_type="application/json", headers=headers)


#: A response body is written this much at a time: a write of tens of MiB at once holds the loop.
CHUNK_BYTES = 1 << 20


async def _chunks(pieces: list[bytes]) -> AsyncIterator[memoryview]:
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), CHUNK_BYTES):
            yield view[start : start + CHUNK_BYTES]


#: Bundles of more policy bytes than this are hashed and signed in a thread.
OFF_LOOP_BYTES = 256 * 1024


async def _off_loop(large: bool, work: Callable[[], T]) -> T:
    """``work()``, in a thread when ``large`` (work that releases the GIL)."""
    return await asyncio.to_thread(work) if large else work()


@router.get("/keys", response_model=PublicKeys, summary="List bundle-signing keys")
async def list_keys(runtime: RuntimeDep) -> dict[str, Any]:
    """The public keys that sign policy bundles (public: an SDK pins or fetches them)."""
    signer = bundle_signer(runtime.settings.pepper)
    return {"keys": [{"key_id": signer.key_id, "alg": "Ed25519", "public_key": b64url(signer.public_key)}]}


@router.post("/simulate", response_model=SimulateOut, summary="Simulate a check")
async def simulate(
    body: SimulateIn, runtime: RuntimeDep, session: SessionDep, principal: Reader
) -> dict[str, Any]:
    """Evaluate a hypothetical request against the saved policies, drafts, or both, with the full trace.

    Nothing is spent and nothing is recorded: budgets are read as they stand. Drafts are held to the
    plan's limits on saved policies, and their number to its `drafts`.
    """
    tenant_id = _tenant(principal)
    plan = plan_of(principal.plan_tier)
    limits.check_drafts(plan, len(body.policies))
    subject = await _simulated_subject(runtime, session, tenant_id, body)
    version = await service.set_version(session, tenant_id)
    drafts: dict[str, dict[str, Any]] = {}
    for index, draft in enumerate(body.policies):
        document = service.document_of(draft.id or uuid.uuid4(), draft)
        limits.check_document(plan, document, f"/policies/{index}")
        await service.check_document(document, f"/policies/{index}")
        drafts[document["id"]] = document
        await asyncio.sleep(0)  # each draft takes a millisecond or more: let other requests in between
    saved: tuple[Any, ...] = ()
    if not body.only_drafts:
        # The saved policies as this replica compiled them for checks (at the version read above or
        # newer): only the drafts are compiled here, each in place of the saved policy of its id.
        current = await runtime.policy.policy_set_at_least(tenant_id, version)
        version, saved = current.version, current.policies
    # Frozen as it is built, though dropped after this request: else each full pass of the garbage
    # collector (one per 70,000 allocations once the saved set is frozen) walks all of it built so far.
    policies = await in_pieces(core.PolicySet.amending(version, saved, drafts.values()), freezing=True)
    context = body.request.context.model_dump(exclude_none=True)
    request = core.Request.of(body.request.action, body.request.resource, context, at=body.at)
    effective = await select_in_pieces(policies, subject, request.action, request)
    decision = core.evaluate(effective, subject, request, trace=True)
    del effective
    await in_pieces(policies.releasing())  # freed a piece at a time, not all at the return
    if decision.budgets:
        spent = await runtime.budgets.spent(tenant_id, decision.budgets)
        decision = decision.with_spent(spent)
    answer = decision.to_json()
    answer["policy_version"] = version
    return answer


async def _simulated_subject(
    runtime: Runtime, session: AsyncSession, tenant_id: uuid.UUID, body: SimulateIn
) -> core.Subject:
    if body.agent_id is not None:
        try:
            agent = await registry.get(session, tenant_id, body.agent_id)
        except NotFound as exc:
            raise BadRequest(
                f"/agent_id: no agent {body.agent_id} in this tenant", code="AGENT_NOT_FOUND"
            ) from exc
        return core.Subject.of(
            str(agent.id),
            status=agent.status,
            capabilities=agent.capabilities,
            agent_type=agent.agent_type,
            owner=agent.owner,
            deployment_env=agent.deployment_env,
            metadata=agent.metadata_,
        )
    assert body.agent is not None
    spec = body.agent
    return core.Subject.of(
        "simulated",
        status=spec.status,
        capabilities=spec.capabilities,
        agent_type=spec.agent_type,
        owner=spec.owner,
        deployment_env=spec.deployment_env,
        metadata=spec.metadata,
    )


# -- the admin plane ---------------------------------------------------------------------------------


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


@router.post("", response_model=PolicyOut, status_code=status.HTTP_201_CREATED, summary="Create a policy")
async def create_policy(
    spec: PolicyIn, response: Response, runtime: RuntimeDep, session: SessionDep, principal: Writer
) -> PolicyOut:
    """Save a policy (version 1). Every replica enforces it within a second.

    The tenant's plan limits policies, rules and document sizes (`POLICY_LIMIT_EXCEEDED`, 413 for one
    document too large, 422 for a tenant total).
    """
    tenant_id = _tenant(principal)
    plan = plan_of(principal.plan_tier)
    policy, version = await service.create(session, tenant_id, spec, principal.actor_id, plan)
    await _changed(runtime, session, principal, "policy.created", policy, version)
    response.headers.update(_etag(policy.version))
    return service.to_out(policy)


async def _changed(
    runtime: Runtime,
    session: AsyncSession,
    principal: Principal,
    event_type: str,
    policy: Any,
    set_version: int,
) -> None:
    data = {
        "policy_id": str(policy.id),
        "name": policy.name,
        "version": policy.version,
        "mode": policy.mode,
        "policy_set_version": set_version,
    }
    await runtime.events.record(by(principal, event_type, data), session)
    tenant_id = policy.tenant_id

    async def announce() -> None:
        # After the commit, so a replica that reloads on hearing it reads the new version.
        await runtime.policy.announce(tenant_id, set_version)

    after_commit(session, announce)


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
    runtime: RuntimeDep,
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
    await _changed(runtime, session, principal, "policy.updated", policy, version)
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
    policy_id: uuid.UUID, runtime: RuntimeDep, session: SessionDep, principal: Writer
) -> Response:
    """Stop enforcing the policy; its versions (and a final `deleted` one) stay readable."""
    policy, version = await service.delete(
        session, _tenant(principal), policy_id, principal.actor_id, plan_of(principal.plan_tier)
    )
    await _changed(runtime, session, principal, "policy.deleted", policy, version)
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
