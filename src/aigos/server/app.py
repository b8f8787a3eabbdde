"""The FastAPI application factory: each context's router, the middleware stack and the lifespan."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from aigos import __version__
from aigos.server.aigrc import api as aigrc_api
from aigos.server.aigrc.sync import CardSync
from aigos.server.aigrc.webhook import Webhook
from aigos.server.audit import api as audit_api
from aigos.server.audit.log import EventLog, checkpoint_signer
from aigos.server.audit.retention import Maintenance, ensure_partitions
from aigos.server.bus import FallbackRateLimiter, create_bus
from aigos.server.bus.redis import RedisBus
from aigos.server.config import ConfigError, Settings
from aigos.server.datadir import DataDirLock
from aigos.server.datadir import prepare as prepare_data_dir
from aigos.server.db import Database
from aigos.server.db.database import APP_ROLE
from aigos.server.db.types import utcnow
from aigos.server.identity import activity, agents_api, agntcy_api, keys_api, oauth_api
from aigos.server.identity.agent_auth import AgentAuthenticator
from aigos.server.identity.keys import SigningKeys
from aigos.server.identity.oauth import OAuthServer
from aigos.server.identity.state import IdentityState
from aigos.server.in_flight import InFlight
from aigos.server.killswitch import api as killswitch_api
from aigos.server.killswitch.hub import create_hub
from aigos.server.logging import configure_logging
from aigos.server.loop_lag import LoopLag
from aigos.server.middleware.admission import Admission, AdmissionMiddleware
from aigos.server.middleware.body_limit import BodyLimitMiddleware
from aigos.server.middleware.request_context import RequestContextMiddleware
from aigos.server.middleware.security_headers import SecurityHeadersMiddleware
from aigos.server.middleware.single_authorization import SingleAuthorizationMiddleware
from aigos.server.openapi import build_openapi
from aigos.server.platform import docs_api, health_api
from aigos.server.platform.admin_token import PlatformTokens, ensure_bootstrap_token
from aigos.server.policy import api as policy_api
from aigos.server.policy.budgets import BudgetBook
from aigos.server.policy.check_endpoint import CheckEndpoint
from aigos.server.policy.checks import Checks
from aigos.server.policy.state import PolicyState
from aigos.server.problems import install_problem_handlers
from aigos.server.runtime import Runtime
from aigos.server.telemetry import api as telemetry_api
from aigos.server.telemetry import metrics, otel
from aigos.server.telemetry.process import ProcessMetrics
from aigos.server.tenancy import activity as tenancy_activity
from aigos.server.tenancy import (
    api_keys_api,
    invitations_api,
    members_api,
    sessions_api,
    tenants_api,
    usage_api,
)
from aigos.server.tenancy.passwords import Passwords
from aigos.server.tenancy.usage import UsageMeter

log = structlog.get_logger("aigos.server")

FEATURES = ["platform", "tenancy", "audit", "identity", "oauth2", "telemetry", "killswitch", "policy"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app for ``settings`` (read from the environment when omitted)."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    in_flight = InFlight()
    admission = Admission(
        limit=settings.max_requests_in_flight,
        wait_seconds=settings.admission_wait_seconds,
        deadline_seconds=settings.request_deadline_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.check_issuer()
        if notice := settings.issuer_notice:
            log.warning("issuer_not_configured", detail=notice)
        # Before anything opens the database: a second server on the same SQLite file is refused here.
        claim = DataDirLock(settings)
        claim.acquire()
        try:
            prepare_data_dir(settings)
            runtime = await start_runtime(settings, in_flight)
        except BaseException:
            claim.release()
            raise
        app.state.runtime = runtime
        if traces is not None:
            otel.trace_database(runtime.database.engine, traces.get_tracer("aigos"))
            if isinstance(runtime.bus, RedisBus):
                otel.trace_redis(runtime.bus.client, traces.get_tracer("aigos"))
        # Built once: the check path reads it instead of assembling it per request.
        fleet = runtime.killswitch.fleet
        app.state.policy_checks = Checks(
            runtime.policy,
            runtime.budgets,
            runtime.events,
            runtime.usage,
            halts=fleet.halts if fleet is not None else None,
            statuses=runtime.identity,
        )
        # What exists now lives as long as the process: keep it out of every later garbage collection,
        # whose full passes would otherwise walk it and show up as tail latency on the check path.
        gc.collect()
        gc.freeze()
        metrics.enabled = settings.metrics_enabled
        lag = LoopLag()
        lag.start()
        app.state.process_metrics = sampled = ProcessMetrics(runtime, admission, lag)
        sampled.start()
        log.info(
            "started",
            version=__version__,
            database=runtime.database.kind,
            bus=runtime.bus.kind,
        )
        try:
            yield
        finally:
            await sampled.stop()
            await lag.stop()
            await runtime.close()
            if traces is not None:
                # What is still batched goes out before the process ends (off the loop: it blocks).
                await asyncio.to_thread(traces.shutdown)
            claim.release()
            log.info("stopped")

    traces = otel.provider() if otel.wanted() else None
    middleware = [
        Middleware(SecurityHeadersMiddleware, hsts_max_age=settings.hsts_max_age),
        Middleware(RequestContextMiddleware, in_flight=in_flight),
    ]
    if traces is not None:
        # Inside the request context: its span replaces the caller's as the trace the events carry.
        middleware.append(Middleware(otel.TracingMiddleware, tracer=traces.get_tracer("aigos")))
    middleware += [
        Middleware(AdmissionMiddleware, admission=admission),
        Middleware(SingleAuthorizationMiddleware),
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "X-Request-ID",
                    "Last-Event-ID",
                    "traceparent",
                    "tracestate",
                ],
                expose_headers=[
                    "X-Request-ID",
                    "Retry-After",
                    "RateLimit-Limit",
                    "RateLimit-Remaining",
                    "RateLimit-Reset",
                ],
                max_age=600,
            )
        )
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes))
    # Innermost: the hot path, past every check above, answered before the framework routes it.
    middleware.append(Middleware(CheckEndpoint))

    app = FastAPI(
        title="AIGOS",
        version=__version__,
        lifespan=lifespan,
        middleware=middleware,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks ask the global providers on every request even when nothing is
        # configured (several µs on the check path); AIGOS's telemetry is wired by AIGOS.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.admission = admission
    app.state.traces = traces
    # Principal resolution (tenancy) is given the platform context's look-up of its admin tokens.
    app.state.platform_tokens = PlatformTokens()
    install_problem_handlers(app)
    # Routes are matched in order: the agent plane first (the check is answered before routing,
    # ``CheckEndpoint``), then the probes, then the admin plane. ``agntcy_api`` stays before ``agents_api``:
    # they share a prefix. Each router's routes are added as they were built at import rather than through
    # ``include_router``, whose wrapper re-analyses every route's dependencies once per application (~0.3 s
    # per app) and walks each wrapper again on every request; none of our routers is included with a prefix,
    # dependencies or a lifespan of its own, so the routes are already complete.
    for router in (
        policy_api.router,
        oauth_api.router,
        agntcy_api.router,
        agents_api.router,
        telemetry_api.router,
        killswitch_api.router,
        health_api.router,
        tenants_api.router,
        api_keys_api.router,
        members_api.router,
        sessions_api.router,
        invitations_api.router,
        usage_api.router,
        audit_api.router,
        keys_api.router,
        aigrc_api.router,
        docs_api.router,
    ):
        app.router.routes.extend(router.routes)
    app.mount("/docs/static", docs_api.static_files(), name="docs-static")

    def openapi() -> dict[str, Any]:
        return build_openapi(app)

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def start_runtime(settings: Settings, in_flight: InFlight | None = None) -> Runtime:
    """Open the database (migrating it if configured), the bus, and install the bootstrap token.

    ``in_flight`` counts the process's requests; the event log's batch writer yields to them.
    """
    if settings.migrate_on_start:
        # Imported here: Alembic is a fair share of the server's start-up time, and only this needs it.
        from aigos.server.db.migrate import upgrade

        await upgrade(settings.resolved_migration_url)
    database = Database(
        settings.resolved_database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        timeout_seconds=settings.database_timeout_seconds,
        pool_timeout_seconds=settings.database_pool_timeout_seconds,
        busy_timeout_seconds=settings.request_deadline_seconds,
        role=APP_ROLE,
    )
    bus = create_bus(settings.redis_url, settings.redis_prefix)
    preset = settings.bootstrap_admin_token.get_secret_value() if settings.bootstrap_admin_token else None
    token = await ensure_bootstrap_token(database, settings.pepper, preset)
    if token is not None and preset is None:
        _announce_bootstrap_token(token)
    # Today's event-log partition must exist before the first entry (maintenance keeps days ahead later).
    await ensure_partitions(database, utcnow().date())
    signer = checkpoint_signer(settings.pepper)
    keys = SigningKeys(database, settings.pepper, settings.token_alg, settings.token_ttl_seconds)
    await keys.start()
    # A rotation on another replica (or by `aigos keys rotate`) is announced on the bus: reload the keys.
    identity = IdentityState(database, bus, on_keys_changed=keys.reload)
    await identity.start()
    policy = PolicyState(database, bus)
    await policy.start()
    hub = create_hub(database, bus, settings, identity)
    events = EventLog(
        database,
        signer,
        queue_size=settings.audit_queue_size,
        batch_size=settings.audit_batch_size,
        flush_seconds=settings.audit_flush_seconds,
        checkpoint_seconds=settings.audit_checkpoint_seconds,
        in_flight=in_flight,
        spill_dir=settings.data_dir / "spill",
        journal_dir=settings.data_dir / "journal" if settings.audit_journal else None,
        journal_sync_seconds=settings.audit_journal_sync_seconds,
    )
    limiter = FallbackRateLimiter(bus.limiter, share=hub.replicas)
    agent_auth = AgentAuthenticator(keys, identity, database, settings)
    credential_used = activity.credential_used(database, settings.usage_flush_seconds)
    agent_auth_seen = activity.agent_authenticated(database, settings.usage_flush_seconds)
    oauth = OAuthServer(
        settings=settings,
        keys=keys,
        identity=identity,
        agents=agent_auth,
        events=events,
        limiter=limiter,
        counters=bus.counters,
        credential_used=credential_used,
        agent_auth_seen=agent_auth_seen,
    )
    runtime = Runtime(
        settings=settings,
        database=database,
        bus=bus,
        usage=UsageMeter(database, settings.usage_flush_seconds),
        key_activity=tenancy_activity.key_used(database, settings.usage_flush_seconds),
        keys=keys,
        identity=identity,
        agent_seen=activity.agent_seen(database, settings.usage_flush_seconds),
        agent_auth_seen=agent_auth_seen,
        credential_used=credential_used,
        agent_auth=agent_auth,
        oauth=oauth,
        killswitch=hub,
        policy=policy,
        budgets=BudgetBook(database, bus.ledger, bus.limiter, settings.usage_flush_seconds),
        limiter=limiter,
        events=events,
        maintenance=Maintenance(database, signer, settings.audit_retention_days),
        aigrc=card_sync(settings, database, events, identity, policy),
        aigrc_webhook=aigrc_webhook(settings, database, events),
        features=list(FEATURES),
        passwords=Passwords(settings.password_hash_memory_kib, settings.password_hash_time_cost),
    )
    # Events an earlier process could not write before it stopped (or was killed): into the log before
    # anything new.
    await runtime.events.replay_spilled()
    await runtime.events.replay_journals()
    runtime.start()
    await runtime.killswitch.start(runtime.events)
    runtime.shutdown.on_close(runtime.killswitch.begin_close)
    runtime.shutdown.watch_signals()
    return runtime


def card_sync(
    settings: Settings, database: Database, events: EventLog, identity: IdentityState, policies: PolicyState
) -> CardSync | None:
    """The AIGRC source's sync, when ``AIGRC_API_URL`` names one (``ConfigError`` without its tenant)."""
    if not settings.aigrc_api_url:
        return None
    if settings.aigrc_tenant_id is None:
        raise ConfigError(
            "AIGRC_API_URL is set but AIGOS_AIGRC_TENANT_ID is not: name the tenant its cards go to."
        )
    key = settings.aigrc_api_key.get_secret_value() if settings.aigrc_api_key else None
    return CardSync(
        database,
        events,
        identity,
        policies,
        settings.aigrc_tenant_id,
        settings.aigrc_api_url,
        key,
        interval=settings.aigrc_sync_seconds,
        allow_private=settings.aigrc_allow_private,
        allow_http=settings.aigrc_allow_private,
    )


def aigrc_webhook(settings: Settings, database: Database, events: EventLog) -> Webhook | None:
    """The webhook back to AIGRC, when ``AIGOS_AIGRC_WEBHOOK_URL`` names one (``ConfigError`` without its
    tenant or its secret: an unsigned delivery could not be told from a forged one)."""
    if not settings.aigrc_webhook_url:
        return None
    if settings.aigrc_tenant_id is None or settings.aigrc_webhook_secret is None:
        raise ConfigError(
            "AIGOS_AIGRC_WEBHOOK_URL needs AIGOS_AIGRC_TENANT_ID (whose events go) and "
            "AIGOS_AIGRC_WEBHOOK_SECRET (the key that signs them)."
        )
    return Webhook(
        database,
        events,
        settings.aigrc_tenant_id,
        settings.aigrc_webhook_url,
        settings.aigrc_webhook_secret.get_secret_value(),
        allow_private=settings.aigrc_allow_private,
    )


def _announce_bootstrap_token(token: str) -> None:
    # Printed, not logged: log lines are shipped and kept; this is shown once to the operator at the console.
    print(
        "\n"
        "  AIGOS bootstrap platform-admin token (shown once, store it now):\n"
        f"    {token}\n"
        "  Use it as `Authorization: Bearer <token>` to create tenants.\n",
        file=sys.stdout,
        flush=True,
    )
