"""The ``aigos`` command: run and operate the server, print its API, and verify audit exports.

Server commands need ``pip install "aigos[server]"``; the light install still answers ``aigos version``
and ``aigos audit verify``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aigos import __version__

if TYPE_CHECKING:
    from aigos.core import auditlog
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


def _load_settings(*, need_secret: bool = True, serving: bool = False) -> Settings:
    try:
        from pydantic import ValidationError

        from aigos.server.config import ConfigError, Settings
    except ImportError as exc:  # the light install
        raise _fail(f'the server is not installed ({exc.name}); run: pip install "aigos[server]"') from exc
    try:
        settings = Settings()
        if need_secret:
            settings.pepper  # noqa: B018 - fail now, not at the first request, if no secret key can be had
        if serving:
            settings.check_issuer()
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


#: The ASGI application factory ``serve`` runs.
APP = "aigos.server.app:create_app"


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="AIGOS_HOST", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="AIGOS_PORT", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(envvar="AIGOS_WORKERS", min=1, help="Worker processes.")] = 1,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated proxy addresses/networks whose X-Forwarded-For/-Proto are trusted ('*': "
            "any); default AIGOS_FORWARDED_ALLOW_IPS, else none.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the API server.

    With no configuration it runs embedded: SQLite under ./.aigos/ and the in-process bus, one process.
    Set AIGOS_DATABASE_URL (postgresql+asyncpg://...) and AIGOS_REDIS_URL (redis://...) to run replicas.
    """
    settings = _load_settings(serving=True)
    if workers > 1 and settings.embedded:
        raise _fail(
            f"embedded mode ({settings.database_kind} database, {settings.bus_kind} bus) keeps state inside "
            "one process and cannot run more than one worker. Set "
            "AIGOS_DATABASE_URL=postgresql+asyncpg://... and AIGOS_REDIS_URL=redis://... to run several."
        )
    if workers > 1 and reload:
        raise _fail("--reload runs a single process; drop --workers or --reload")
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
            raise _fail(str(exc)) from exc
    shared: listening.ReusePortSocket | None = None
    if workers > 1 and listening.AVAILABLE:
        # Bound before anything else, so a taken port fails at once with a clear message.
        try:
            shared = listening.ReusePortSocket.bind_to(host, port)
        except OSError as exc:
            raise _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
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

        Multiprocess(uvicorn.Config(APP, **options), sockets=[shared]).run()
    else:
        uvicorn.run(APP, **options)


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


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply database migrations (AIGOS_DATABASE_MIGRATION_URL, else AIGOS_DATABASE_URL)."""
    settings = _load_settings()
    from aigos.server.datadir import prepare
    from aigos.server.db.migrate import current_revision, upgrade

    prepare(settings)

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


# -- aigos audit -------------------------------------------------------------------------------------
# This path must work with the light install (`pip install aigos`): it imports only aigos.core, httpx and
# the standard library, never aigos.server.

audit_app = typer.Typer(
    name="audit", help="Verify the tamper-evident event log.", no_args_is_help=True, add_completion=False
)
app.add_typer(audit_app, name="audit")

_PINNING_NOTE = (
    "note: checked against the keys in the export's own header, which proves the log was not altered by "
    "anyone without the server's signing key. Pinning the keys published at GET /v1/audit/keys with "
    "--public-key KEY_ID=B64URL is stronger: it also holds the server itself to them."
)


def _pinned_keys(values: list[str]) -> dict[str, bytes]:
    """``KEY_ID=B64URL`` options as a key-id-to-raw-key map; usage error (exit 2) when one is malformed."""
    from aigos.core import signing

    keys: dict[str, bytes] = {}
    for value in values:
        kid, sep, encoded = value.partition("=")
        kid, encoded = kid.strip(), encoded.strip()
        if not sep or not kid or not encoded:
            raise _fail(f"--public-key takes KEY_ID=B64URL, got {value!r}")
        try:
            raw = signing.unb64url(encoded)
        except ValueError as exc:
            raise _fail(f"--public-key {kid}: not base64url") from exc
        if len(raw) != 32:
            raise _fail(f"--public-key {kid}: an Ed25519 public key is 32 bytes, this one is {len(raw)}")
        if signing.key_id(raw) != kid:
            raise _fail(f"--public-key {kid}: that key's id is {signing.key_id(raw)}, not {kid}")
        keys[kid] = raw
    return keys


def _verify_download(url: str, api_key: str, trusted: dict[str, bytes] | None) -> auditlog.Report:
    """Stream ``GET /v1/audit/export`` from ``url`` into the verifier line by line."""
    import httpx

    from aigos.core import auditlog

    endpoint = url.rstrip("/") + "/v1/audit/export"
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/x-ndjson"}
    try:
        with httpx.stream(
            "GET", endpoint, headers=headers, timeout=httpx.Timeout(30.0, read=300.0)
        ) as response:
            if response.status_code != 200:
                response.read()
                try:
                    detail = str(response.json().get("detail", ""))
                except ValueError:
                    detail = response.text[:200]
                raise _fail(f"{endpoint} answered {response.status_code}: {detail}")
            return auditlog.verify_export(response.iter_lines(), trusted)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot download {endpoint}: {exc}") from exc


def _verify_file(path: Path, trusted: dict[str, bytes] | None) -> auditlog.Report:
    """Verify an export file (``-``: standard input), reading it line by line."""
    import sys

    from aigos.core import auditlog

    if str(path) == "-":
        return auditlog.verify_export(sys.stdin.buffer, trusted)
    try:
        with path.open("rb") as lines:
            return auditlog.verify_export(lines, trusted)
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}") from exc


@audit_app.command("verify")
def audit_verify(
    file: Annotated[
        Path | None,
        typer.Argument(help="An export (NDJSON from GET /v1/audit/export); `-` reads standard input."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Download the export from this server (http://host:port) and verify it as it streams."
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="AIGOS_API_KEY", show_default=False, help="An API key with `audit:read`, for --url."
        ),
    ] = None,
    public_key: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY_ID=B64URL",
            show_default=False,
            help="Trust only this checkpoint-signing key (repeatable); see GET /v1/audit/keys.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify an audit export: every entry's hash, the chain, and every signed checkpoint.

    Exits 0 when everything verifies, 1 when it does not (naming the line, seq and event id of the first
    failure), 2 on usage errors.
    """
    if (file is None) == (url is None):
        raise _fail("give an export FILE or --url, one of them")
    if url is not None and not api_key:
        raise _fail("--url needs --api-key (or AIGOS_API_KEY)")
    trusted = _pinned_keys(public_key) if public_key else None
    if url is not None:
        assert api_key is not None
        report = _verify_download(url, api_key, trusted)
    else:
        assert file is not None
        report = _verify_file(file, trusted)
    if trusted is None:
        typer.secho(_PINNING_NOTE, err=True, fg=typer.colors.YELLOW)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    elif report.ok:
        span = f"seq {report.first_seq}..{report.last_seq}" if report.entries else "no entries"
        summary = (
            f"OK: tenant {report.tenant_id}: {report.entries} entries ({span}), "
            f"{report.checkpoints} signed checkpoints, sealed through seq {report.sealed_through}"
        )
        if report.unsealed:
            summary += f"; the last {report.unsealed} entries are chained but not yet signed"
        typer.secho(f"{summary}; keys: {', '.join(report.key_ids) or 'none'}", fg=typer.colors.GREEN)
    else:
        typer.secho(f"FAILED: {report.failure}", fg=typer.colors.RED)
    if report.losses and not as_json:
        _print_losses(report)
    if not report.ok:
        raise typer.Exit(code=1)


def _print_losses(report: auditlog.Report) -> None:
    """The log's own record of acknowledged events it does not hold: never verified away in silence."""
    typer.secho(
        f"LOSSES: {len(report.losses)} entries record {report.lost} acknowledged events that were lost:",
        fg=typer.colors.YELLOW,
    )
    for loss in report.losses:
        span = f", {loss['from']} .. {loss['to']}" if loss.get("from") or loss.get("to") else ""
        process = f", process {loss['process']}" if loss.get("process") else ""
        typer.secho(
            f"  seq {loss['seq']}: {loss['event_type']}: {loss.get('count')} "
            f"({loss.get('reason', 'no reason given')}{process}{span})",
            fg=typer.colors.YELLOW,
        )


@audit_app.command("prune")
def audit_prune(
    retention_days: Annotated[
        int | None,
        typer.Option(min=1, show_default=False, help="Days to keep (default: AIGOS_AUDIT_RETENTION_DAYS)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Prune event-log entries past retention now, as the server does hourly (server install only).

    Each tenant's log is anchored and sealed before its old entries go, so what remains still verifies.
    Exits 1 when a tenant's entries did not verify and were therefore kept.
    """
    settings = _load_settings()
    from aigos.server.audit.retention import run_once

    result = asyncio.run(run_once(settings, retention_days))
    if as_json:
        body = {
            "cutoff": result.cutoff.isoformat(),
            "tenants": result.tenants,
            "entries": result.entries,
            "removed": result.removed,
            "partitions_dropped": result.partitions_dropped,
            "left_behind": result.left_behind,
            "refused": [str(tenant) for tenant in result.refused],
            "skipped": result.skipped,
        }
        typer.echo(json.dumps(body, indent=2))
    elif result.skipped:
        typer.echo("another process is pruning right now; nothing done")
    else:
        typer.echo(
            f"entries recorded before {result.cutoff.isoformat()}: {result.entries} anchored in "
            f"{result.tenants} tenants, {result.removed} removed, {result.left_behind} left in storage"
        )
    if result.refused:
        for tenant in result.refused:
            typer.secho(
                f"FAILED: tenant {tenant}: its log does not verify; kept", err=True, fg=typer.colors.RED
            )
        raise typer.Exit(code=1)


# -- aigos keys --------------------------------------------------------------------------------------

keys_app = typer.Typer(
    name="keys",
    help="List and rotate the token-signing keys (server install only).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(keys_app, name="keys")


def _log_to_stderr(settings: Settings) -> None:
    """The server's log format, on standard error: standard output is the command's answer (``--json``)."""
    import logging
    import sys

    from aigos.server.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)


async def _signing_keys(settings: Settings, rotate: bool) -> tuple[dict[str, object], int | None]:
    """The key list after an optional rotation, and how many servers heard of it (None: no rotation)."""
    from aigos.server.bus import create_bus
    from aigos.server.db import Database
    from aigos.server.db.database import APP_ROLE
    from aigos.server.db.migrate import upgrade
    from aigos.server.identity.keys import SigningKeys
    from aigos.server.identity.keys_api import list_keys
    from aigos.server.identity.state import publish_keys_changed

    if settings.migrate_on_start:
        await upgrade(settings.resolved_migration_url)
    database = Database(settings.resolved_database_url, pool_size=2, max_overflow=0, role=APP_ROLE)
    try:
        keys = SigningKeys(database, settings.pepper, settings.token_alg, settings.token_ttl_seconds)
        await keys.start()
        notified: int | None = None
        if rotate:
            await keys.rotate()
            bus = create_bus(settings.redis_url, settings.redis_prefix)
            try:
                notified = await publish_keys_changed(bus)
            finally:
                await bus.close()
        listed = await list_keys(database, keys)
    finally:
        await database.dispose()
    return listed.model_dump(mode="json"), notified


def _print_keys(body: dict[str, object]) -> None:
    keys = body["keys"]
    assert isinstance(keys, list)
    typer.echo(f"{'kid':<44} {'alg':<6} {'status':<8} {'published':<9} {'created':<20} publish until")
    for key in keys:
        published = "yes" if key["published"] else "no"
        created = str(key["created_at"])[:19]
        until = str(key["publish_until"] or "-")[:19]
        kid = key["kid"] + (" *" if key["signing"] else "")
        typer.echo(f"{kid:<44} {key['alg']:<6} {key['status']:<8} {published:<9} {created:<20} {until}")
    typer.echo("(* signs new tokens)")


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON.")] = False,
) -> None:
    """List the signing keys: status, whether in the JWKS, and until when (creates the first if none)."""
    settings = _load_settings()
    _log_to_stderr(settings)
    body, _ = asyncio.run(_signing_keys(settings, rotate=False))
    if as_json:
        typer.echo(json.dumps(body, indent=2))
    else:
        _print_keys(body)


@keys_app.command("rotate")
def keys_rotate(
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON.")] = False,
) -> None:
    """Sign new tokens with a new key; the old ones stay in the JWKS until their tokens have expired.

    Running servers are told on the bus (Redis) and reload their keys. An embedded server (in-process
    bus) cannot hear this command: restart it, or rotate through POST /v1/admin/signing-keys/rotate.
    """
    settings = _load_settings()
    _log_to_stderr(settings)
    body, notified = asyncio.run(_signing_keys(settings, rotate=True))
    if as_json:
        typer.echo(json.dumps({**body, "servers_notified": notified}, indent=2))
        return
    typer.secho(f"rotated: new tokens are signed with {body['active_kid']}", fg=typer.colors.GREEN)
    if settings.bus_kind == "redis":
        typer.echo(f"servers notified on the bus: {notified}")
    else:
        typer.secho(
            "note: no Redis bus configured; a running embedded server picks up the new key when it "
            "restarts (or use POST /v1/admin/signing-keys/rotate on the server)",
            err=True,
            fg=typer.colors.YELLOW,
        )
    _print_keys(body)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
