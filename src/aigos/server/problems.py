"""RFC 9457 problem details: the one shape every error response takes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from aigos.server.bus import BusUnavailable
from aigos.server.db.outage import unavailable
from aigos.server.errors import (
    AigosError,
    MalformedJSON,
    MethodNotAllowed,
    NotFound,
    OAuthError,
    ServiceUnavailable,
    ValidationFailed,
)
from aigos.server.telemetry import metrics

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE_URI = "https://aigos.dev/problems/"
#: RFC 6749 section 5.1: token endpoint answers, errors included, are never cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

log = structlog.get_logger("aigos.errors")


def request_id_of(scope: Scope) -> str | None:
    """The request id the request-context middleware put into the scope."""
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


def problem_response(
    scope: Scope,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Response:
    """Build a problem+json response for ``scope``'s request."""
    request_id = request_id_of(scope)
    body: dict[str, Any] = {
        "type": PROBLEM_BASE_URI + code.lower().replace("_", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": scope.get("path"),
        "request_id": request_id,
    }
    if extensions:
        body.update({key: value for key, value in extensions.items() if key not in body})
    # X-Request-ID is added by the request-context middleware, which every response passes through.
    return Response(
        json.dumps(body, default=str, separators=(",", ":")),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def error_response(scope: Scope, error: AigosError) -> Response:
    """Render one of our exceptions."""
    if error.status in (429, 503) and metrics.enabled:
        _count(error)
    return problem_response(
        scope,
        status=error.status,
        code=error.instance_code,
        title=error.title,
        detail=error.detail,
        headers=error.headers,
        extensions=error.extensions,
    )


def _count(error: AigosError) -> None:
    if error.status == 429:
        metrics.RATE_LIMITED.labels(error.instance_code).inc()
    elif error.extensions.get("dependency") == "database":
        metrics.DATABASE_ERRORS.inc()


def internal_error_response(scope: Scope) -> Response:
    """The generic 500: says nothing about the cause; the stack goes to the log only."""
    return problem_response(
        scope,
        status=500,
        code="INTERNAL_ERROR",
        title="Internal server error",
        detail="The server failed to handle the request; quote the request id when reporting it.",
    )


def json_pointer(loc: Sequence[str | int]) -> str:
    """A JSON pointer (RFC 6901) or parameter name for a pydantic error location."""
    where, *path = loc or ("body",)
    escaped = "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)
    if where == "body":
        return "/" + escaped if escaped else ""
    return f"{where}:{escaped}" if escaped else str(where)


def _validation_error(exc: RequestValidationError) -> AigosError:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return MalformedJSON("The request body is not valid JSON.")
    items = [
        {"pointer": json_pointer(err.get("loc", ())), "detail": str(err.get("msg", "invalid"))}
        for err in errors
    ]
    first = items[0] if items else {"pointer": "", "detail": "invalid"}
    where = first["pointer"] or "the body"
    return ValidationFailed(f"{where}: {first['detail']}", errors=items)


async def _handle_aigos(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AigosError)
    return error_response(request.scope, exc)


async def _handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(request.scope, _validation_error(exc))


async def _handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: AigosError
    if exc.status_code == 404:
        error = NotFound(f"No route for {request.method} {request.url.path}.")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.")
    elif exc.status_code == 400:
        error = MalformedJSON("The request body could not be read.")
    else:
        return problem_response(
            request.scope,
            status=exc.status_code,
            code=f"HTTP_{exc.status_code}",
            title=str(exc.detail),
            detail=str(exc.detail),
            headers=exc.headers,
        )
    if exc.headers:
        error.headers.update(exc.headers)
    return error_response(request.scope, error)


async def _handle_database(request: Request, exc: Exception) -> Response:
    # A statement or the commit failed. Nothing of the request is kept (its transaction rolled back), so
    # the answer is an error, never the success the endpoint may already have computed.
    if (problem := unavailable(exc)) is not None:
        log.warning("database_unavailable", error=repr(exc), path=request.url.path)
        return error_response(request.scope, problem)
    log.error("database_error", exc_info=exc, path=request.url.path)
    return internal_error_response(request.scope)


async def _handle_oauth(request: Request, exc: Exception) -> Response:
    # The OAuth 2.0 endpoints answer in the RFC 6749 section 5.2 form, not as problems.
    assert isinstance(exc, OAuthError)
    return JSONResponse(
        {"error": exc.error, "error_description": exc.description},
        status_code=exc.status,
        headers={**NO_STORE, **exc.headers},
    )


async def _handle_bus(request: Request, exc: Exception) -> Response:
    # Whatever still needs Redis when it is gone (request admission falls back to per-process limits;
    # what cannot, such as single-use assertion ids, fails closed): a 503 the client may retry.
    log.warning("bus_unavailable", error=str(exc), path=request.url.path)
    return error_response(
        request.scope,
        ServiceUnavailable(
            "The bus (Redis) is unavailable; retry shortly.",
            code="BUS_UNAVAILABLE",
            headers={"Retry-After": "1"},
            dependency="bus",
        ),
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error the app can produce a problem+json response."""
    app.add_exception_handler(AigosError, _handle_aigos)
    app.add_exception_handler(OAuthError, _handle_oauth)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _handle_database)
    app.add_exception_handler(BusUnavailable, _handle_bus)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
