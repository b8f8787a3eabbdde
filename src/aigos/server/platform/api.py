"""Health, readiness and build information."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import structlog
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from aigos import __version__
from aigos.server.deps import RuntimeDep
from aigos.server.errors import ServiceUnavailable
from aigos.server.platform.schemas import Backends, Info, Liveness, Readiness
from aigos.server.routing import ValidatedRoute

router = APIRouter(tags=["platform"], route_class=ValidatedRoute)
log = structlog.get_logger("aigos.health")


@router.get("/health", response_model=Liveness, summary="Liveness")
async def health() -> Liveness:
    """Answers while the process serves requests; checks nothing else (use `/health/ready` for that)."""
    return Liveness()


@router.get(
    "/health/ready",
    response_model=Readiness,
    summary="Readiness",
    responses={503: {"description": "A dependency is down; the problem body names it."}},
)
async def ready(runtime: RuntimeDep) -> Readiness:
    """Checks the database and the bus (Redis) within a short timeout each."""
    timeout = runtime.settings.ready_timeout_seconds
    probes: dict[str, Awaitable[Any]] = {
        "database": runtime.database.ping(timeout),
        "bus": asyncio.wait_for(runtime.bus.ping(), timeout),
    }
    results = await asyncio.gather(*probes.values(), return_exceptions=True)
    checks: dict[str, Any] = {}
    for name, result in zip(probes, results, strict=True):
        checks[name] = "down" if isinstance(result, BaseException) else "up"
        if isinstance(result, BaseException):
            log.warning("dependency_down", dependency=name, error=repr(result))
    down = [name for name, state in checks.items() if state == "down"]
    if down:
        kinds = {"database": runtime.database.kind, "bus": runtime.bus.kind}
        named = ", ".join(f"{name} ({kinds[name]})" for name in down)
        raise ServiceUnavailable(f"Not ready: {named} unreachable.", code="NOT_READY", checks=checks)
    return Readiness(checks=checks)


@router.get("/v1/info", response_model=Info, summary="Server information")
async def info(runtime: RuntimeDep) -> Info:
    """Version, backend kinds and enabled features."""
    return Info(
        version=__version__,
        backends=Backends(
            database=runtime.database.kind, bus=runtime.bus.kind, embedded=runtime.settings.embedded
        ),
        features=runtime.features,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
)
async def metrics(runtime: RuntimeDep) -> PlainTextResponse:
    """This process's counters and gauges in the Prometheus text format (scrape every replica)."""
    events = runtime.events
    samples = [
        ("aigos_eventlog_queue_depth", "gauge", "Buffered events waiting to be appended.", events.depth),
        (
            "aigos_eventlog_queue_capacity",
            "gauge",
            "Buffered events held before new ones drop.",
            events.queue_size,
        ),
        (
            "aigos_eventlog_appended_total",
            "counter",
            "Events appended by this process.",
            events.appended_total,
        ),
        (
            "aigos_eventlog_dropped_total",
            "counter",
            "Events dropped because the queue was full.",
            events.dropped_total,
        ),
    ]
    lines: list[str] = []
    for name, kind, help_text, value in samples:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
