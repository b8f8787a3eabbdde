"""Routes of the tenancy context: tenants (signup), API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from aigos.server.audit.events import NewEvent, by, current_request_id
from aigos.server.deps import RuntimeDep, SessionDep
from aigos.server.errors import Forbidden, RateLimited
from aigos.server.routing import ValidatedRoute
from aigos.server.tenancy import api_keys, tenants
from aigos.server.tenancy import scopes as scope_catalogue
from aigos.server.tenancy.deps import OptionalPrincipalDep, PrincipalDep, require, require_tenant
from aigos.server.tenancy.principal import Principal
from aigos.server.tenancy.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    Page,
    RotateIn,
    SignupIn,
    SignupOut,
    TenantOut,
    TenantUpdate,
)
from aigos.server.throttle import Throttle, Throttled, source_address

router = APIRouter(prefix="/v1", tags=["tenancy"], route_class=ValidatedRoute)

PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]


@router.post("/tenants", response_model=SignupOut, status_code=status.HTTP_201_CREATED, summary="Sign up")
async def create_tenant(
    spec: SignupIn,
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: OptionalPrincipalDep,
) -> SignupOut:
    """Create a tenant with its owner and first API key (shown once).

    Open to anyone unless `AIGOS_SIGNUP_ENABLED=false`; then only the platform-admin token may call it.
    Anonymous signups are limited per source address (429 `RATE_LIMITED` with `Retry-After`). An email
    already in use becomes the owner only with that account's password (409 `EMAIL_TAKEN` otherwise).
    """
    is_platform = principal is not None and principal.is_platform
    if not runtime.settings.signup_enabled and not is_platform:
        raise Forbidden(
            "Signup is closed; ask the platform admin to create the tenant.", code="SIGNUP_CLOSED"
        )
    if principal is None:
        throttle = Throttle(runtime.limiter, runtime.settings)
        try:
            await throttle.spend(throttle.signup(source_address(request)), "signups")
        except Throttled as exc:
            raise RateLimited(str(exc), headers=exc.headers) from exc
    created = await tenants.signup(session, runtime.settings.pepper, runtime.passwords, spec, principal)
    actor = (
        ("platform", principal.actor_id.split(":", 1)[1])
        if principal
        else ("user", str(created.owner.user_id))
    )
    event = NewEvent(
        tenant_id=created.tenant.id,
        event_type="tenant.created",
        actor_type=actor[0],
        actor_id=actor[1],
        data={
            "name": created.tenant.name,
            "slug": created.tenant.slug,
            "plan_tier": created.tenant.plan_tier,
            "owner_user_id": str(created.owner.user_id),
            "api_key_id": str(created.api_key.id),
        },
        request_id=current_request_id(),
    )
    await runtime.events.record(event, session)
    return created


@router.get("/tenants", response_model=Page[TenantOut], summary="List tenants (platform admin)")
async def list_tenants(
    session: SessionDep, principal: PrincipalDep, page: PageNo = 1, limit: Limit = 20
) -> Page[TenantOut]:
    """Every tenant; the platform-admin token only."""
    if not principal.is_platform:
        raise Forbidden("Only the platform admin can list tenants.", code="PLATFORM_ONLY")
    rows, total = await tenants.page(session, page=page, limit=limit)
    return Page(data=[TenantOut.model_validate(row) for row in rows], page=page, limit=limit, total=total)


@router.get("/tenants/{tenant_id}", response_model=TenantOut, summary="Get a tenant")
async def get_tenant(
    tenant_id: uuid.UUID,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require("tenant:read"))],
) -> TenantOut:
    """The caller's own tenant (any other id answers 404)."""
    return TenantOut.model_validate(await tenants.get(session, principal, tenant_id))


@router.put("/tenants/{tenant_id}", response_model=TenantOut, summary="Update a tenant")
async def update_tenant(
    tenant_id: uuid.UUID,
    spec: TenantUpdate,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require("tenant:write"))],
) -> TenantOut:
    """Change the name or settings; the platform admin may also change plan and status."""
    tenant = await tenants.update(session, principal, tenant_id, spec)
    changed = spec.model_dump(exclude_unset=True, exclude_none=True)
    await runtime.events.record(by(principal, "tenant.updated", changed, tenant_id=tenant.id), session)
    if "settings" in changed:
        # Committed first, so a replica that reloads on hearing it reads the new settings.
        await session.commit()
        await runtime.policy.announce_tenant_changed(tenant.id)
    return TenantOut.model_validate(tenant)


@router.get("/api-keys/scopes", response_model=dict[str, str], summary="List scopes")
async def list_scopes() -> dict[str, str]:
    """Every scope a key can hold, with what it allows."""
    return scope_catalogue.SCOPES


@router.post(
    "/api-keys",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key",
)
async def create_api_key(
    spec: ApiKeyIn,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("api_keys:write"))],
) -> ApiKeyCreated:
    """A new key; the secret is in this response only."""
    key = await api_keys.create(session, runtime.settings.pepper, principal, spec)
    data = {"api_key_id": str(key.id), "name": key.name, "scopes": key.scopes, "environment": key.environment}
    await runtime.events.record(by(principal, "api_key.created", data), session)
    return key


@router.get("/api-keys", response_model=Page[ApiKeyOut], summary="List API keys")
async def list_api_keys(
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("api_keys:read"))],
    page: PageNo = 1,
    limit: Limit = 20,
    include_revoked: bool = False,
) -> Page[ApiKeyOut]:
    """The tenant's keys, newest first, without secrets."""
    assert principal.tenant_id is not None
    rows, total = await api_keys.page(
        session, principal.tenant_id, page=page, limit=limit, include_revoked=include_revoked
    )
    data = [api_keys.to_out(row, runtime.key_activity.pending(row.id)) for row in rows]
    return Page(data=data, page=page, limit=limit, total=total)


@router.get("/api-keys/{key_id}", response_model=ApiKeyOut, summary="Get an API key")
async def get_api_key(
    key_id: uuid.UUID,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("api_keys:read"))],
) -> ApiKeyOut:
    """One key of the tenant, without its secret."""
    assert principal.tenant_id is not None
    key = await api_keys.get(session, principal.tenant_id, key_id)
    return api_keys.to_out(key, runtime.key_activity.pending(key.id))


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke an API key")
async def revoke_api_key(
    key_id: uuid.UUID,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("api_keys:write"))],
) -> Response:
    """Stop the key at once, on every server process. The record stays.

    403 `SCOPE_ESCALATION` when the key holds a scope the caller lacks.
    """
    key = await api_keys.revoke(session, principal, key_id)
    await runtime.events.record(by(principal, "api_key.revoked", {"api_key_id": str(key.id)}), session)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api-keys/{key_id}/rotate",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Rotate an API key",
)
async def rotate_api_key(
    key_id: uuid.UUID,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("api_keys:write"))],
    spec: RotateIn | None = None,
) -> ApiKeyCreated:
    """A successor key (shown once); the old one works until the grace period ends (0: stops now)."""
    grace = spec.grace_seconds if spec and spec.grace_seconds is not None else None
    if grace is None:
        grace = runtime.settings.api_key_rotation_grace_seconds
    successor = await api_keys.rotate(session, runtime.settings.pepper, principal, key_id, grace)
    data = {"api_key_id": str(key_id), "successor_id": str(successor.id), "grace_seconds": grace}
    await runtime.events.record(by(principal, "api_key.rotated", data), session)
    return successor


@router.post(
    "/platform/tenants/{tenant_id}/recovery-key",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Issue a recovery key (platform admin)",
)
async def issue_recovery_key(
    tenant_id: uuid.UUID,
    response: Response,
    runtime: RuntimeDep,
    session: SessionDep,
    principal: PrincipalDep,
) -> ApiKeyCreated:
    """A new owner-level (`admin`) API key for a tenant that lost its owner key; shown once.

    The platform-admin token only. Not counted against the plan's key limit (a locked-out tenant may be at
    it), and recorded in the tenant's own event log, so its members see that the platform admin did it.
    """
    if not principal.is_platform:
        raise Forbidden("Only the platform admin can issue a recovery key.", code="PLATFORM_ONLY")
    tenant = await tenants.get(session, principal, tenant_id)
    spec = ApiKeyIn(name="Recovery key", scopes=[scope_catalogue.ADMIN], environment="live")
    key = await api_keys.issue(
        session, runtime.settings.pepper, tenant.id, spec, created_by=principal.actor_id
    )
    data = {"api_key_id": str(key.id), "scopes": key.scopes}
    await runtime.events.record(by(principal, "api_key.recovery_issued", data, tenant_id=tenant.id), session)
    response.headers["Cache-Control"] = "no-store"
    return key
