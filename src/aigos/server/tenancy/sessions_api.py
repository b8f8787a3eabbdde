"""Routes of members' sign-in sessions: sign in and out."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from aigos.server.audit.events import NewEvent, by, current_request_id
from aigos.server.deps import EventsDep, LimiterDep, SessionDep, SettingsDep
from aigos.server.errors import Forbidden, RateLimited, Unauthenticated
from aigos.server.tenancy import sessions
from aigos.server.tenancy.deps import PasswordsDep, PrincipalDep
from aigos.server.tenancy.schemas import LoginIn, LoginOut
from aigos.server.throttle import Throttle, Throttled, source_address

router = APIRouter(prefix="/v1", tags=["tenancy"])

NO_STORE = {"Cache-Control": "no-store"}


def _rate_limited(exc: Throttled) -> RateLimited:
    return RateLimited(str(exc), headers=exc.headers)


@router.post(
    "/auth/login",
    response_model=LoginOut,
    summary="Sign in",
    responses={
        401: {"description": "Wrong email, password or tenant"},
        429: {"description": "Too many failures"},
    },
)
async def login(
    spec: LoginIn,
    request: Request,
    response: Response,
    settings: SettingsDep,
    limiter: LimiterDep,
    passwords: PasswordsDep,
    events: EventsDep,
    session: SessionDep,
) -> LoginOut:
    """A member signs in to one tenant with their password; the session works on the admin API with the
    member's role's scopes until it expires or `POST /v1/auth/logout`. Failed attempts are throttled per
    email and per source address (429 `RATE_LIMITED` with `Retry-After`)."""
    throttle = Throttle(limiter, settings)
    buckets = throttle.sign_in("login", spec.email, source_address(request))
    try:
        await throttle.check(buckets, "failed sign-ins")
    except Throttled as exc:
        raise _rate_limited(exc) from exc
    try:
        out = await sessions.login(session, settings.pepper, passwords, spec, settings.session_ttl_seconds)
    except Unauthenticated:
        await throttle.record(buckets)
        raise
    event = NewEvent(
        tenant_id=out.tenant_id,
        event_type="user.signed_in",
        actor_type="user",
        actor_id=str(out.user_id),
        data={"role": out.role},
        request_id=current_request_id(),
    )
    await events.record(event, session)
    response.headers.update(NO_STORE)
    return out


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT, summary="Sign out")
async def logout(events: EventsDep, session: SessionDep, principal: PrincipalDep) -> Response:
    """End the session this request is made with, on every server process."""
    if principal.kind != "session":
        raise Forbidden("Only a sign-in session can sign out.", code="SESSION_REQUIRED")
    await sessions.logout(session, principal)
    await events.record(by(principal, "user.signed_out"), session)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
