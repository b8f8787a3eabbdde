"""The token endpoint (RFC 6749 section 3.2): client credentials (section 4.4, with secrets or RFC 7523
assertions) and token exchange (RFC 8693). The grants themselves are ``identity.grants``."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.db.commit_hooks import after_commit
from aigos.server.deps import SessionDep
from aigos.server.errors import OAuthError
from aigos.server.identity import grants
from aigos.server.identity.agent_auth import issuer_for
from aigos.server.identity.deps import OAuthServerDep
from aigos.server.identity.oauth import OAuthServer
from aigos.server.identity.oauth_api.forms import FORM_BODY, read_form
from aigos.server.identity.tokens import Issued
from aigos.server.problems import NO_STORE
from aigos.server.routing import OAuthRoute
from aigos.server.telemetry import metrics
from aigos.server.throttle import source_address

router = APIRouter(tags=["oauth2"], route_class=OAuthRoute)


@router.post(
    "/oauth2/token",
    summary="Token endpoint",
    openapi_extra=FORM_BODY,
    responses={
        200: {"description": "An access token"},
        400: {"description": "RFC 6749 error"},
        429: {"description": "Too many failed client authentications (RFC 6749 error, `Retry-After`)"},
    },
)
async def token(request: Request, oauth: OAuthServerDep, session: SessionDep) -> Response:
    """Issue an agent access token.

    `grant_type=client_credentials` with `client_secret_basic`, `client_secret_post` or `private_key_jwt`;
    or `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` with the parent's token as
    `subject_token` and the child agent's id as `requested_agent` (RFC 8693), for a child token whose
    capabilities are within the parent's.
    """
    try:
        form = await read_form(request)
        grant = form.get("grant_type")
        issued = await _issue(request, oauth, session, form, grant)
    except OAuthError as exc:
        if metrics.enabled:
            metrics.TOKENS_REFUSED.labels(exc.error).inc()
        raise
    body: dict[str, Any] = {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.claims["scope"],
    }
    if grant == grants.TOKEN_EXCHANGE:
        body["issued_token_type"] = grants.ACCESS_TOKEN_TYPE
    if metrics.enabled:
        after_commit(session, partial(metrics.increment, metrics.TOKENS_ISSUED.labels(str(grant))))
    return JSONResponse(body, headers=NO_STORE)


async def _issue(
    request: Request, oauth: OAuthServer, session: AsyncSession, form: dict[str, str], grant: str | None
) -> Issued:
    issuer = issuer_for(request, oauth.settings)
    if grant == grants.CLIENT_CREDENTIALS:
        authorization = request.headers.get("authorization")
        return await grants.client_credentials(
            oauth, session, form, authorization, source_address(request), issuer
        )
    if grant == grants.TOKEN_EXCHANGE:
        return await grants.token_exchange(oauth, session, form, issuer)
    if not grant:
        raise OAuthError("invalid_request", "grant_type is required.")
    raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported.")
