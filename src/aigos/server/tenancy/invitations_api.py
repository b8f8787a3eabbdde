"""Routes of invitations: a person joins the tenant that invited them."""

from __future__ import annotations

from fastapi import APIRouter

from aigos.server.audit.events import NewEvent, current_request_id
from aigos.server.deps import EventsDep, SessionDep, SettingsDep
from aigos.server.tenancy import invitations
from aigos.server.tenancy.deps import PasswordsDep
from aigos.server.tenancy.schemas import InvitationAccept, InvitationAccepted

router = APIRouter(prefix="/v1", tags=["tenancy"])


@router.post("/invitations/accept", response_model=InvitationAccepted, summary="Accept an invitation")
async def accept_invitation(
    spec: InvitationAccept,
    settings: SettingsDep,
    passwords: PasswordsDep,
    events: EventsDep,
    session: SessionDep,
) -> InvitationAccepted:
    """Join the tenant that invited you, with the single-use token the admin handed you.

    A new account chooses its password here; an existing account gives its own password.
    """
    joined = await invitations.accept(session, settings.pepper, passwords, spec.token, spec.password)
    event = NewEvent(
        tenant_id=joined.tenant_id,
        event_type="member.joined",
        actor_type="user",
        actor_id=str(joined.user_id),
        data={"user_id": str(joined.user_id), "role": joined.role},
        request_id=current_request_id(),
    )
    await events.record(event, session)
    return joined
