"""OpenTelemetry traces (the optional extra ``aigos[otel]``): one server span per HTTP request, exported
over OTLP/HTTP, configured by OpenTelemetry's own variables.

On when an exporter endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and ``OTEL_SDK_DISABLED`` is not ``true``; the SDK itself reads
the rest: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (the service is ``aigos`` unless named),
``OTEL_TRACES_SAMPLER`` and its argument, the exporter's headers, timeout and compression, the batch
processor's delays. Off, nothing of it is imported and no request pays anything for it.

Each statement the database runs for a request is a client span of its own, a child of the request's
(``db.system.name``, ``db.operation.name`` and the statement's text, never its parameters); statements
run outside a sampled request start no span. So is each
Redis command a request sends (``db.system.name`` ``redis`` and the command's name, never its keys or
values); the bus's own background traffic (kill-switch fan-out, pings) starts no trace.

A request's span is a child of the caller's W3C ``traceparent`` when it sent one, so an agent's trace
continues through AIGOS; the events the request records carry the span's trace id and span id
(``server.tracing``), so the audit log and the traces join on them.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigos.server import tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted() -> bool:
    """Whether the environment asks for traces."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def provider() -> TracerProvider:
    """A tracer provider exporting in batches over OTLP/HTTP, as the environment configures it.

    ``ImportError`` (with how to install the extra) if the extra is not installed.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ImportError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not installed: "
            "pip install 'aigos[server,otel]' (or unset it)"
        ) from exc
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "aigos"}
    made = TracerProvider(resource=Resource.create(named))
    made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return made


#: Statement text kept on a database span, at most (the text only: parameters never leave the server).
MAX_STATEMENT = 2_000


def trace_database(engine: AsyncEngine, tracer: Tracer) -> None:
    """A client span around each statement ``engine`` runs while a sampled request's span is current."""
    from opentelemetry.trace import SpanKind, StatusCode, get_current_span
    from sqlalchemy import event

    system = engine.dialect.name
    sync_engine = engine.sync_engine

    def before(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        if not get_current_span().is_recording():
            # Outside a sampled request (a request not sampled, the event log's writer, the sweeps): no
            # span, not even a root one: background statements would otherwise each start a trace.
            return
        operation = (statement.split(None, 1) or ["SQL"])[0].upper()
        context._aigos_span = tracer.start_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": system,
                "db.operation.name": operation,
                "db.query.text": statement[:MAX_STATEMENT],
            },
        )

    def after(_conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool) -> None:
        span = getattr(context, "_aigos_span", None)
        if span is not None:
            span.end()

    def failed(exception_context: Any) -> None:
        span = getattr(exception_context.execution_context, "_aigos_span", None)
        if span is not None:
            span.set_status(StatusCode.ERROR, type(exception_context.original_exception).__name__)
            span.end()

    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", failed)


def trace_redis(client: Redis, tracer: Tracer) -> None:
    """A client span around each command ``client`` sends while a request's span is current."""
    from opentelemetry.trace import SpanKind, get_current_span

    send: Callable[..., Awaitable[Any]] = client.execute_command

    async def traced(*args: Any, **options: Any) -> Any:
        if not get_current_span().is_recording():
            return await send(*args, **options)
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        operation = name.upper()
        with tracer.start_as_current_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "redis", "db.operation.name": operation},
            record_exception=True,
        ):
            return await send(*args, **options)

    # Every command, script and publish goes through it; the instance attribute shadows the method.
    client.execute_command = traced  # type: ignore[method-assign]


class TracingMiddleware:
    """A server span around each HTTP request, its ids made the request's trace for the events it records."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

        self.app = app
        self.tracer = tracer
        self._extract = extract
        self._kind = SpanKind.SERVER
        self._error = StatusCode.ERROR
        self._trace_hex = format_trace_id
        self._span_hex = format_span_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        method = scope["method"]
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
            method, context=self._extract(carrier), kind=self._kind, record_exception=True
        ) as span:
            ids = span.get_span_context()
            token = tracing.current.set((self._trace_hex(ids.trace_id), self._span_hex(ids.span_id)))
            try:
                await self.app(scope, receive, send_status)
            finally:
                tracing.current.reset(token)
                route = getattr(scope.get("route"), "path", None)
                attributes: dict[str, Any] = {
                    "http.request.method": method,
                    "url.path": scope["path"],
                    "http.response.status_code": status,
                }
                if route:
                    attributes["http.route"] = route
                    span.update_name(f"{method} {route}")
                span.set_attributes(attributes)
                if status >= 500:
                    span.set_status(self._error)
