"""Token revocation (RFC 7009), for the client a token was issued to (or the parent that obtained it)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from aigos.server.deps import SessionDep
from aigos.server.errors import OAuthError
from aigos.server.identity import revocation
from aigos.server.identity.agent_auth import issuer_for
from aigos.server.identity.deps import OAuthServerDep
from aigos.server.identity.oauth import authenticate_agent
from aigos.server.identity.oauth_api.forms import FORM_BODY, read_form
from aigos.server.problems import NO_STORE
from aigos.server.routing import OAuthRoute
from aigos.server.throttle import source_address

router = APIRouter(tags=["oauth2"], route_class=OAuthRoute)


@router.post("/oauth2/revoke", summary="Token revocation (RFC 7009)", openapi_extra=FORM_BODY)
async def revoke(request: Request, oauth: OAuthServerDep, session: SessionDep) -> Response:
    """Revoke an access token of the caller's tenant. Unknown or foreign tokens also answer 200 (RFC 7009)."""
    form = await read_form(request)
    issuer = issuer_for(request, oauth.settings)
    authorization = request.headers.get("authorization")
    caller = await authenticate_agent(oauth, session, form, authorization, source_address(request), issuer)
    if "token" not in form:
        raise OAuthError("invalid_request", "token is required.")
    if form.get("token_type_hint") not in (None, "access_token", "refresh_token"):
        raise OAuthError("unsupported_token_type", "Only access tokens exist here.")
    await revocation.revoke(oauth, session, caller, form["token"], issuer)
    return Response(status_code=200, headers=NO_STORE)
