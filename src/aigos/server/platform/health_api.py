"""Health, readiness and build information."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from aigos import __version__
from aigos.server.db import Database
from aigos.server.db.outage import DatabaseUnavailable
from aigos.server.deps import BusDep, DatabaseDep, EventsDep, SettingsDep
from aigos.server.errors import ServiceUnavailable
from aigos.server.platform.deps import FeaturesDep
from aigos.server.platform.schemas import Backends, Info, Liveness, Readiness
from aigos.server.routing import ValidatedRoute
from aigos.server.telemetry import metrics as telemetry_metrics
from aigos.server.telemetry.process import ProcessMetrics

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
async def metrics(request: Request) -> Response:
    """Every worker's metrics of this replica in the Prometheus text format (scrape every replica)."""
    sampled: ProcessMetrics = request.app.state.process_metrics
    # This worker's sampled figures fresh; the other workers' are at most a second old.
    sampled.sampler.sample()
    return Response(telemetry_metrics.exposition(), media_type=telemetry_metrics.CONTENT_TYPE)
