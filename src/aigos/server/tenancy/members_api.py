"""Routes of the tenancy context: members."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from aigos.server.audit.events import by
from aigos.server.deps import EventsDep, SessionDep, SettingsDep
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.schemas import Page
from aigos.server.tenancy import members
from aigos.server.tenancy.deps import require_tenant
from aigos.server.tenancy.schemas import MemberIn, MemberInvited, MemberOut, MemberUpdate

router = APIRouter(prefix="/v1", tags=["tenancy"], route_class=ValidatedRoute)

PageNo = Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]
Reader = Annotated[Principal, Depends(require_tenant("members:read"))]
Writer = Annotated[Principal, Depends(require_tenant("members:write"))]


@router.get("/members", response_model=Page[MemberOut], summary="List members")
async def list_members(
    session: SessionDep, principal: Reader, page: PageNo = 1, limit: Limit = 20
) -> Page[MemberOut]:
    """The tenant's members, oldest first; `invited` marks users who have not set a password yet."""
    assert principal.tenant_id is not None
    rows, total = await members.page(session, principal.tenant_id, page=page, limit=limit)
    return Page(data=rows, page=page, limit=limit, total=total)


@router.post(
    "/members", response_model=MemberInvited, status_code=status.HTTP_201_CREATED, summary="Invite a member"
)
async def add_member(
    spec: MemberIn,
    response: Response,
    settings: SettingsDep,
    events: EventsDep,
    session: SessionDep,
    principal: Writer,
) -> MemberInvited:
    """Invite the person with this email: a pending membership and a single-use invitation token, shown
    in this response only. They join by accepting it (`POST /v1/invitations/accept`); until then the
    member is `invited` and cannot sign in to this tenant. The answer is the same whether or not the email
    belongs to a registered user. Inviting a still-pending member again issues a fresh token.

    409 `MEMBER_EXISTS` if already a member who joined, 403 `PLAN_LIMIT_EXCEEDED` past the plan's member
    limit. Adding an `owner` needs a key with the `admin` scope.
    """
    member = await members.add(session, settings.pepper, principal, spec, settings.invitation_ttl_seconds)
    event = by(principal, "member.invited", {"user_id": str(member.user_id), "role": member.role})
    await events.record(event, session)
    response.headers["Cache-Control"] = "no-store"
    return member


@router.get("/members/{user_id}", response_model=MemberOut, summary="Get a member")
async def get_member(user_id: uuid.UUID, session: SessionDep, principal: Reader) -> MemberOut:
    """One member of the tenant; 404 `MEMBER_NOT_FOUND` for anyone else."""
    assert principal.tenant_id is not None
    return await members.get(session, principal.tenant_id, user_id)


@router.patch("/members/{user_id}", response_model=MemberOut, summary="Change a member's role")
async def update_member(
    user_id: uuid.UUID, spec: MemberUpdate, events: EventsDep, session: SessionDep, principal: Writer
) -> MemberOut:
    """Give the member another role.

    Making or unmaking an owner needs a key with the `admin` scope; demoting the last owner answers
    409 `LAST_OWNER`.
    """
    member = await members.change_role(session, principal, user_id, spec)
    event = by(principal, "member.role_changed", {"user_id": str(user_id), "role": member.role})
    await events.record(event, session)
    return member


@router.delete("/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a member")
async def remove_member(
    user_id: uuid.UUID, events: EventsDep, session: SessionDep, principal: Writer
) -> Response:
    """Take the user out of the tenant; the user account stays (it may belong to other tenants).

    Removing an owner needs a key with the `admin` scope; removing the last owner answers 409 `LAST_OWNER`.
    """
    await members.remove(session, principal, user_id)
    await events.record(by(principal, "member.removed", {"user_id": str(user_id)}), session)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
