"""The ``aigos`` command: run and operate the server, and print its API.

Server commands need ``pip install "aigos[server]"``; the light install still answers ``aigos version``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aigos import __version__

if TYPE_CHECKING:
    from aigos.server.config import Settings

app = typer.Typer(
    name="aigos",
    help="AIGOS: identity and governance control plane for AI agents.",
    no_args_is_help=True,
    add_completion=False,
)


class SpecFormat(StrEnum):
    """Output formats of ``aigos openapi``."""

    yaml = "yaml"
    json = "json"


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _load_settings(*, need_secret: bool = True) -> Settings:
    try:
        from pydantic import ValidationError

        from aigos.server.config import ConfigError, Settings
    except ImportError as exc:  # the light install
        raise _fail(f'the server is not installed ({exc.name}); run: pip install "aigos[server]"') from exc
    try:
        settings = Settings()
        if need_secret:
            settings.pepper  # noqa: B018 - fail now, not at the first request, if no secret key can be had
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        raise _fail("invalid configuration:\n" + "\n".join(lines)) from exc
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    return settings


@app.command()
def version() -> None:
    """Print the AIGOS version."""
    typer.echo(__version__)


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="AIGOS_HOST", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="AIGOS_PORT", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(envvar="AIGOS_WORKERS", min=1, help="Worker processes.")] = 1,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
) -> None:
    """Run the API server.

    With no configuration it runs embedded: SQLite under ./.aigos/ and the in-process bus, one process.
    Set AIGOS_DATABASE_URL (postgresql+asyncpg://...) and AIGOS_REDIS_URL (redis://...) to run replicas.
    """
    settings = _load_settings()
    if workers > 1 and settings.embedded:
        raise _fail(
            f"embedded mode ({settings.database_kind} database, {settings.bus_kind} bus) keeps state inside "
            "one process and cannot run more than one worker. Set "
            "AIGOS_DATABASE_URL=postgresql+asyncpg://... and AIGOS_REDIS_URL=redis://... to run several."
        )
    if workers > 1 and reload:
        raise _fail("--reload runs a single process; drop --workers or --reload")
    import uvicorn

    from aigos.server.db.migrate import upgrade
    from aigos.server.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if settings.migrate_on_start and workers > 1:
        # Once here rather than racing in every worker (they would wait on the lock and find nothing to do).
        asyncio.run(upgrade(settings.resolved_migration_url))
    _exit_zero_after_graceful_shutdown()
    uvicorn.run(
        "aigos.server.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        reload=reload,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=True,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )


def _exit_zero_after_graceful_shutdown() -> None:
    # uvicorn drains on SIGTERM/SIGINT, then restores the previous handlers and re-raises the signal. With
    # the default handlers that turns a clean shutdown into "killed by signal" (exit 143); these no-op
    # handlers let `serve` return and the process exit 0 once the drain is done.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: None)


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply database migrations (AIGOS_DATABASE_MIGRATION_URL, else AIGOS_DATABASE_URL)."""
    settings = _load_settings()
    from aigos.server.db.migrate import current_revision, upgrade

    url = settings.resolved_migration_url
    asyncio.run(upgrade(url, revision))
    typer.echo(f"database at revision {asyncio.run(current_revision(url))}")


@app.command()
def openapi(
    fmt: Annotated[SpecFormat, typer.Option("--format", help="Output format.")] = SpecFormat.yaml,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
) -> None:
    """Print the OpenAPI specification (docs/openapi.yaml is this command's output)."""
    settings = _load_settings(need_secret=False)
    from aigos.server.app import create_app

    spec = create_app(settings).openapi()
    if fmt is SpecFormat.json:
        text = json.dumps(spec, indent=2) + "\n"
    else:
        import yaml

        class _NoAliases(yaml.SafeDumper):
            def ignore_aliases(self, data: object) -> bool:
                return True

        text = yaml.dump(spec, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=110)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
