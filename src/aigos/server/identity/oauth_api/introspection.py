"""Token introspection (RFC 7662), for clients of the token's tenant."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from aigos.server.deps import SessionDep
from aigos.server.errors import OAuthError
from aigos.server.identity.agent_auth import introspection, issuer_for
from aigos.server.identity.deps import OAuthServerDep
from aigos.server.identity.oauth import authenticate_agent
from aigos.server.identity.oauth_api.forms import FORM_BODY, read_form
from aigos.server.problems import NO_STORE
from aigos.server.routing import OAuthRoute
from aigos.server.throttle import source_address

router = APIRouter(tags=["oauth2"], route_class=OAuthRoute)


@router.post("/oauth2/introspect", summary="Token introspection (RFC 7662)", openapi_extra=FORM_BODY)
async def introspect(request: Request, oauth: OAuthServerDep, session: SessionDep) -> Response:
    """Whether a token is active, and its claims. The caller authenticates as a client of the same tenant."""
    form = await read_form(request)
    issuer = issuer_for(request, oauth.settings)
    authorization = request.headers.get("authorization")
    caller = await authenticate_agent(oauth, session, form, authorization, source_address(request), issuer)
    if "token" not in form:
        raise OAuthError("invalid_request", "token is required.")
    body = await introspection(oauth.agents, caller.tenant_id, form["token"], issuer)
    return JSONResponse(body, headers=NO_STORE)
