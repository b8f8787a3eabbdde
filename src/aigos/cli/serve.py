"""``aigos serve``: run the API server with uvicorn, one process or several workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from aigos.cli.settings import fail, load_settings

#: The ASGI application factory ``serve`` runs.
APP = "aigos.server.app:create_app"
#: prometheus-client's variable for the directory its processes share samples in (not imported from the
#: server's metrics: importing them here, before it is set, would give this process files of its own).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@click.command()
@click.option(
    "--host",
    envvar="AIGOS_HOST",
    default="127.0.0.1",
    show_default=True,
    show_envvar=True,
    help="Interface to bind.",
)
@click.option(
    "--port", envvar="AIGOS_PORT", default=8000, show_default=True, show_envvar=True, help="TCP port."
)
@click.option(
    "--workers",
    envvar="AIGOS_WORKERS",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    show_envvar=True,
    help="Worker processes.",
)
@click.option(
    "--reload/--no-reload", default=False, show_default=True, help="Restart on code changes (development)."
)
@click.option(
    "--forwarded-allow-ips",
    help="Comma-separated proxy addresses/networks whose X-Forwarded-For/-Proto are trusted ('*': "
    "any); default AIGOS_FORWARDED_ALLOW_IPS, else none.",
)
def serve(host: str, port: int, workers: int, reload: bool, forwarded_allow_ips: str | None) -> None:
    """Run the API server.

    With no configuration it runs embedded: SQLite under ./.aigos/ and the in-process bus, one process.
    Set AIGOS_DATABASE_URL (postgresql+asyncpg://...) and AIGOS_REDIS_URL (redis://...) to run replicas.
    """
    settings = load_settings(serving=True)
    if workers > 1 and settings.embedded:
        raise fail(
            f"embedded mode ({settings.database_kind} database, {settings.bus_kind} bus) keeps state inside "
            "one process and cannot run more than one worker. Set "
            "AIGOS_DATABASE_URL=postgresql+asyncpg://... and AIGOS_REDIS_URL=redis://... to run several."
        )
    if workers > 1 and reload:
        raise fail("--reload runs a single process; drop --workers or --reload")
    import uvicorn

    from aigos.server import datadir, http_protocol, listening
    from aigos.server.db.migrate import upgrade
    from aigos.server.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if not reload:
        # Held for the life of this process (the app takes it again here); with --reload the app runs in
        # a child process and takes it there.
        try:
            datadir.DataDirLock(settings).acquire()
        except datadir.DataDirInUse as exc:
            raise fail(str(exc)) from exc
    shared: listening.ReusePortSocket | None = None
    if workers > 1 and listening.AVAILABLE:
        # Bound before anything else, so a taken port fails at once with a clear message.
        try:
            shared = listening.ReusePortSocket.bind_to(host, port)
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    if settings.migrate_on_start and workers > 1:
        # Once here rather than racing in every worker (they would wait on the lock and find nothing to do).
        asyncio.run(upgrade(settings.resolved_migration_url))
    _exit_zero_after_graceful_shutdown()
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "reload": reload,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        # Read deadlines for request heads and bodies (uvicorn has none; a slow sender would hold a socket).
        "http": http_protocol.protocol_path(),
        **_forwarding(settings.forwarded_allow_ips if forwarded_allow_ips is None else forwarded_allow_ips),
        "timeout_graceful_shutdown": int(settings.shutdown_timeout_seconds),
    }
    if shared is not None:
        # Each worker listens on a socket of its own, so connections spread over all of them.
        from uvicorn.supervisors import Multiprocess

        with _shared_metrics():
            Multiprocess(uvicorn.Config(APP, **options), sockets=[shared]).run()
    elif workers > 1:
        with _shared_metrics():
            uvicorn.run(APP, **options)
    else:
        uvicorn.run(APP, **options)


@contextlib.contextmanager
def _shared_metrics() -> Iterator[None]:
    """A directory for the workers' metric samples, so any one of them answers a scrape for all.

    Fresh for each run unless ``PROMETHEUS_MULTIPROC_DIR`` names one, which is emptied first: samples of a
    previous run would otherwise be added to this one's. Set before the workers start, which read it when
    they import the metrics.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield
        return
    with tempfile.TemporaryDirectory(prefix="aigos-metrics-") as created:
        os.environ[MULTIPROC_ENV] = created
        try:
            yield
        finally:
            os.environ.pop(MULTIPROC_ENV, None)


def _forwarding(allowed: str) -> dict[str, Any]:
    """uvicorn's proxy options: trust forwarding headers only from the configured proxies.

    uvicorn trusts 127.0.0.1 when told nothing (its ``FORWARDED_ALLOW_IPS`` default), so any process on the
    host could choose the client address that logs, audit and throttles see; here nothing is trusted then.
    """
    allowed = ",".join(part.strip() for part in allowed.split(",") if part.strip())
    if not allowed:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": allowed}


def _exit_zero_after_graceful_shutdown() -> None:
    # uvicorn drains on SIGTERM/SIGINT, then restores the previous handlers and re-raises the signal. With
    # the default handlers that turns a clean shutdown into "killed by signal" (exit 143); these no-op
    # handlers let `serve` return and the process exit 0 once the drain is done.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: None)
