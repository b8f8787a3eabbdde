"""Routes of tenancy's tenants: sign up, list (platform admin), read and update a tenant."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from aigos.server.audit.events import NewEvent, by, current_request_id
from aigos.server.deps import EventsDep, LimiterDep, SessionDep, SettingsDep
from aigos.server.errors import Forbidden, RateLimited
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.schemas import Page
from aigos.server.tenancy import tenants
from aigos.server.tenancy.deps import (
    OptionalPrincipalDep,
    PasswordsDep,
    PrincipalDep,
    TenantChangesDep,
    require,
)
from aigos.server.tenancy.schemas import SignupIn, SignupOut, TenantOut, TenantUpdate
from aigos.server.throttle import Throttle, Throttled, source_address

router = APIRouter(prefix="/v1", tags=["tenancy"], route_class=ValidatedRoute)

PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]


@router.post("/tenants", response_model=SignupOut, status_code=status.HTTP_201_CREATED, summary="Sign up")
async def create_tenant(
    spec: SignupIn,
    request: Request,
    settings: SettingsDep,
    limiter: LimiterDep,
    passwords: PasswordsDep,
    events: EventsDep,
    session: SessionDep,
    principal: OptionalPrincipalDep,
) -> SignupOut:
    """Create a tenant with its owner and first API key (shown once).

    Open to anyone unless `AIGOS_SIGNUP_ENABLED=false`; then only the platform-admin token may call it.
    Anonymous signups are limited per source address (429 `RATE_LIMITED` with `Retry-After`). An email
    already in use becomes the owner only with that account's password (409 `EMAIL_TAKEN` otherwise).
    """
    is_platform = principal is not None and principal.is_platform
    if not settings.signup_enabled and not is_platform:
        raise Forbidden(
            "Signup is closed; ask the platform admin to create the tenant.", code="SIGNUP_CLOSED"
        )
    if principal is None:
        throttle = Throttle(limiter, settings)
        try:
            await throttle.spend(throttle.signup(source_address(request)), "signups")
        except Throttled as exc:
            raise RateLimited(str(exc), headers=exc.headers) from exc
    created = await tenants.signup(session, settings.pepper, passwords, spec, principal)
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
    await events.record(event, session)
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
    events: EventsDep,
    tenant_changes: TenantChangesDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require("tenant:write"))],
) -> TenantOut:
    """Change the name or settings; the platform admin may also change plan and status."""
    tenant = await tenants.update(session, principal, tenant_id, spec)
    changed = spec.model_dump(exclude_unset=True, exclude_none=True)
    await events.record(by(principal, "tenant.updated", changed, tenant_id=tenant.id), session)
    if "settings" in changed:
        # Committed first, so a replica that reloads on hearing it reads the new settings.
        await session.commit()
        await tenant_changes.announce_tenant_changed(tenant.id)
    return TenantOut.model_validate(tenant)
