"""Refuse a request that carries more than one ``Authorization`` header.

Which of two credentials a server reads is an accident of its code (today the first): a request with two
tenants' keys must not be answered with either tenant's data. It is refused at the edge, for every route,
before any credential is looked at.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from aigos.server.errors import BadRequest
from aigos.server.problems import error_response

#: The OAuth 2.0 endpoints answer in the RFC 6749 form, which their clients parse.
OAUTH_PREFIX = "/oauth2/"
DETAIL = "The request carries more than one Authorization header; send exactly one credential."


class SingleAuthorizationMiddleware:
    """400 ``DUPLICATE_AUTHORIZATION`` (``invalid_request`` on the OAuth endpoints) for repeated headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _authorizations(scope) < 2:
            await self.app(scope, receive, send)
            return
        response: Response
        if str(scope.get("path", "")).startswith(OAUTH_PREFIX):
            response = JSONResponse(
                {"error": "invalid_request", "error_description": DETAIL},
                status_code=400,
                headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
            )
        else:
            response = error_response(scope, BadRequest(DETAIL, code="DUPLICATE_AUTHORIZATION"))
        await response(scope, receive, send)


def _authorizations(scope: Scope) -> int:
    # Header names arrive lower-cased from the server.
    return sum(1 for name, _ in scope["headers"] if name == b"authorization")
