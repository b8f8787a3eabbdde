"""Routes of tenancy's API keys: create, list, revoke and rotate a tenant's keys, and the platform admin's
recovery key."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from aigos.server.audit.events import by
from aigos.server.deps import EventsDep, SessionDep, SettingsDep
from aigos.server.errors import Forbidden
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.schemas import Page
from aigos.server.tenancy import api_keys, tenants
from aigos.server.tenancy import scopes as scope_catalogue
from aigos.server.tenancy.deps import KeyActivityDep, PrincipalDep, require_tenant
from aigos.server.tenancy.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut, RotateIn

router = APIRouter(prefix="/v1", tags=["tenancy"], route_class=ValidatedRoute)

PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]


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
    settings: SettingsDep,
    events: EventsDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("api_keys:write"))],
) -> ApiKeyCreated:
    """A new key; the secret is in this response only."""
    key = await api_keys.create(session, settings.pepper, principal, spec)
    data = {"api_key_id": str(key.id), "name": key.name, "scopes": key.scopes, "environment": key.environment}
    await events.record(by(principal, "api_key.created", data), session)
    return key


@router.get("/api-keys", response_model=Page[ApiKeyOut], summary="List API keys")
async def list_api_keys(
    key_activity: KeyActivityDep,
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
    data = [api_keys.to_out(row, key_activity.pending(row.id)) for row in rows]
    return Page(data=data, page=page, limit=limit, total=total)


@router.get("/api-keys/{key_id}", response_model=ApiKeyOut, summary="Get an API key")
async def get_api_key(
    key_id: uuid.UUID,
    key_activity: KeyActivityDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("api_keys:read"))],
) -> ApiKeyOut:
    """One key of the tenant, without its secret."""
    assert principal.tenant_id is not None
    key = await api_keys.get(session, principal.tenant_id, key_id)
    return api_keys.to_out(key, key_activity.pending(key.id))


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke an API key")
async def revoke_api_key(
    key_id: uuid.UUID,
    events: EventsDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("api_keys:write"))],
) -> Response:
    """Stop the key at once, on every server process. The record stays.

    403 `SCOPE_ESCALATION` when the key holds a scope the caller lacks.
    """
    key = await api_keys.revoke(session, principal, key_id)
    await events.record(by(principal, "api_key.revoked", {"api_key_id": str(key.id)}), session)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api-keys/{key_id}/rotate",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Rotate an API key",
)
async def rotate_api_key(
    key_id: uuid.UUID,
    settings: SettingsDep,
    events: EventsDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("api_keys:write"))],
    spec: RotateIn | None = None,
) -> ApiKeyCreated:
    """A successor key (shown once); the old one works until the grace period ends (0: stops now)."""
    grace = spec.grace_seconds if spec and spec.grace_seconds is not None else None
    if grace is None:
        grace = settings.api_key_rotation_grace_seconds
    successor = await api_keys.rotate(session, settings.pepper, principal, key_id, grace)
    data = {"api_key_id": str(key_id), "successor_id": str(successor.id), "grace_seconds": grace}
    await events.record(by(principal, "api_key.rotated", data), session)
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
    settings: SettingsDep,
    events: EventsDep,
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
    key = await api_keys.issue(session, settings.pepper, tenant.id, spec, created_by=principal.actor_id)
    data = {"api_key_id": str(key.id), "scopes": key.scopes}
    await events.record(by(principal, "api_key.recovery_issued", data, tenant_id=tenant.id), session)
    response.headers["Cache-Control"] = "no-store"
    return key
