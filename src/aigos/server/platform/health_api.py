"""Health, readiness and build information."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from aigos import __version__
from aigos.server.db import Database
from aigos.server.db.outage import DatabaseUnavailable
from aigos.server.deps import BusDep, DatabaseDep, EventsDep, SettingsDep
from aigos.server.errors import ServiceUnavailable
from aigos.server.loop_lag import LoopLag
from aigos.server.middleware.admission import Admission
from aigos.server.platform.deps import FeaturesDep
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
async def ready(settings: SettingsDep, database: DatabaseDep, bus: BusDep, events: EventsDep) -> Readiness:
    """Checks the database and the bus (Redis) within a short timeout each, that the database can write
    (``database``: ``full`` when its storage is), and that the event log's batch writer is making
    progress (``eventlog``: ``stalled`` after a few seconds without an append).

    503 when the database or the event log cannot do its part. The bus down answers 200 with status
    ``degraded``: the replica still serves the admin API and the kill switch (delivered through
    PostgreSQL), and refuses agents' policy checks with 503 until the bus is back.
    """
    timeout = settings.ready_timeout_seconds
    probes: dict[str, Awaitable[Any]] = {
        "database": _database(database, timeout),
        "bus": asyncio.wait_for(bus.ping(), timeout),
    }
    results = await asyncio.gather(*probes.values(), return_exceptions=True)
    checks: dict[str, Any] = {}
    for name, result in zip(probes, results, strict=True):
        checks[name] = "up"
        if isinstance(result, BaseException):
            full = isinstance(result, DatabaseUnavailable) and result.instance_code == "STORAGE_FULL"
            checks[name] = "full" if full else "down"
            log.warning("dependency_down", dependency=name, error=repr(result))
    down = [name for name, state in checks.items() if state != "up"]
    stuck = events.problem()
    checks["eventlog"] = "stalled" if stuck else "up"
    # The bus (Redis) down is no reason to leave the load balancer: the kill switch, the admin API (on
    # per-process rate limits) and agents' checks (refused, 503) all still answer here, and with every
    # replica unready nobody could stop an agent. Such a replica is ready but `degraded`.
    if [name for name in down if name != "bus"] or stuck:
        kinds = {"database": database.kind, "bus": bus.kind}
        reasons = [
            f"{name} ({kinds[name]}) {'storage full' if checks[name] == 'full' else 'unreachable'}"
            for name in down
        ]
        if stuck:
            log.warning("eventlog_stalled", problem=stuck)
            reasons.append(stuck)
        raise ServiceUnavailable(f"Not ready: {'; '.join(reasons)}.", code="NOT_READY", checks=checks)
    return Readiness(status="degraded" if down else "ready", checks=checks)


async def _database(database: Database, within_seconds: float) -> None:
    # Answering is not enough: a database on a full disk answers reads while refusing every write.
    await database.ping(within_seconds)
    await asyncio.wait_for(database.check_storage(), within_seconds)


@router.get("/v1/info", response_model=Info, summary="Server information")
async def info(settings: SettingsDep, database: DatabaseDep, bus: BusDep, features: FeaturesDep) -> Info:
    """Version, backend kinds and enabled features."""
    return Info(
        version=__version__,
        backends=Backends(database=database.kind, bus=bus.kind, embedded=settings.embedded),
        features=features,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
)
async def metrics(events: EventsDep, request: Request) -> PlainTextResponse:
    """This process's counters and gauges in the Prometheus text format (scrape every replica)."""
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
            events.tallies.appended,
        ),
        (
            "aigos_eventlog_dropped_total",
            "counter",
            "Events dropped because the queue was full.",
            events.tallies.dropped,
        ),
        (
            "aigos_eventlog_set_aside_total",
            "counter",
            "Events the database refused, set aside and recorded as audit.event_set_aside.",
            events.tallies.set_aside,
        ),
        (
            "aigos_eventlog_flush_failures_total",
            "counter",
            "Batch appends that failed and were retried (the database was unreachable).",
            events.tallies.flush_failures,
        ),
        ("aigos_eventlog_stalled", "gauge", "1 while the batch writer cannot append.", int(events.stalled)),
        (
            "aigos_eventlog_spilled_total",
            "counter",
            "Events written to a spill file at shutdown because the database would not take them.",
            events.tallies.spilled,
        ),
        (
            "aigos_eventlog_replayed_total",
            "counter",
            "Events replayed from spill files at start.",
            events.tallies.replayed,
        ),
    ]
    lines: list[str] = []
    for name, kind, help_text, value in samples:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    lag: LoopLag | None = getattr(request.app.state, "loop_lag", None)
    if lag is not None:
        lines += lag.exposition()
    lines += _admission_lines(request.app.state.admission)
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def _admission_lines(admission: Admission) -> list[str]:
    # Shedding is the server working as designed under overload: visible here, never silent.
    refused = sorted(admission.refused.items())
    lines = [
        "# HELP aigos_requests_refused_total Requests answered 503 by admission (shed, past their deadline, "
        "an outage), by code.",
        "# TYPE aigos_requests_refused_total counter",
        *(f'aigos_requests_refused_total{{code="{code}"}} {n}' for code, n in refused),
        "# HELP aigos_requests_in_flight Requests being handled, by admission lane.",
        "# TYPE aigos_requests_in_flight gauge",
    ]
    for lane in (admission.general, admission.killswitch):
        lines.append(f'aigos_requests_in_flight{{lane="{lane.name}"}} {lane.active}')
    return lines
