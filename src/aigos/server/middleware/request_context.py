"""Request id in and out, the access log line, and the last line of defence against unexpected errors."""

from __future__ import annotations

import logging
import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigos.core.tracecontext import parse_traceparent
from aigos.server import tracing
from aigos.server.in_flight import InFlight
from aigos.server.problems import internal_error_response
from aigos.server.telemetry import metrics

# Accept a caller's id only if it is short and harmless in logs and headers.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

access_log = structlog.get_logger("aigos.access")
_access_level = logging.getLogger("aigos.access")
error_log = structlog.get_logger("aigos.errors")


class RequestContextMiddleware:
    """Assigns each request an id, binds it into every log line, and writes one access-log line.

    The id comes from ``X-Request-ID`` when the caller sent a safe one, else a new UUID, and is echoed in
    the response. Routes put the tenant into ``scope["state"]["tenant_id"]`` once known; the access log
    reports it. An exception that escapes the app becomes a generic 500 problem and a logged stack.
    Each request counts in ``in_flight`` until its response starts.
    """

    def __init__(self, app: ASGIApp, in_flight: InFlight | None = None) -> None:
        self.app = app
        self.in_flight = in_flight or InFlight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming, traceparent = _incoming(scope)
        request_id = incoming or uuid.uuid4().hex
        trace = parse_traceparent(traceparent) if traceparent else None
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        status = 500
        started = False
        in_flight = self.in_flight

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                if not started:
                    in_flight.leave()
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        in_flight.enter()
        start = time.perf_counter()
        if trace is None:
            tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        else:
            tokens = structlog.contextvars.bind_contextvars(
                request_id=request_id, trace_id=trace[0], span_id=trace[1]
            )
        trace_token = tracing.current.set(trace) if trace is not None else None
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_log.exception("unhandled_exception", method=scope["method"], path=scope["path"])
            if started:
                raise
            await internal_error_response(scope)(scope, receive, send_with_id)
        finally:
            if not started:
                in_flight.leave()
            if metrics.enabled:
                route = getattr(scope.get("route"), "path", None) or metrics.UNMATCHED
                metrics.answered(scope["method"], route, status, time.perf_counter() - start)
            # Asked of the standard library first (a cached lookup): below the level, the structlog call
            # alone would cost more than several of our middlewares together.
            if _access_level.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    latency_ms=round((time.perf_counter() - start) * 1000, 3),
                    tenant_id=state.get("tenant_id"),
                    client=scope["client"][0] if scope.get("client") else None,
                )
            structlog.contextvars.reset_contextvars(**tokens)
            if trace_token is not None:
                tracing.current.reset(trace_token)


def _incoming(scope: Scope) -> tuple[str | None, str | None]:
    """The caller's safe ``X-Request-ID`` and its ``traceparent``, in one pass over the headers."""
    request_id = traceparent = None
    for name, value in scope["headers"]:
        if name == b"x-request-id" and request_id is None:
            candidate = value.decode("latin-1")
            request_id = candidate if _SAFE_ID.match(candidate) else ""
        elif name == b"traceparent" and traceparent is None:
            traceparent = value.decode("latin-1")
    return request_id or None, traceparent
