"""``aigos keys``: list and rotate the token-signing keys, on the database the server uses."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import click

from aigos.cli.group import Group
from aigos.cli.settings import load_settings, log_to_stderr

if TYPE_CHECKING:
    from aigos.server.config import Settings

app = Group("keys", help="List and rotate the token-signing keys (server install only).")


async def _signing_keys(settings: Settings, rotate: bool) -> tuple[dict[str, object], int | None]:
    """The key list after an optional rotation, and how many servers heard of it (None: no rotation)."""
    from aigos.server.bus import create_bus
    from aigos.server.db import Database
    from aigos.server.db.database import APP_ROLE
    from aigos.server.db.migrate import upgrade
    from aigos.server.identity.keys import SigningKeys, list_keys
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
    click.echo(f"{'kid':<44} {'alg':<6} {'status':<8} {'published':<9} {'created':<20} publish until")
    for key in keys:
        published = "yes" if key["published"] else "no"
        created = str(key["created_at"])[:19]
        until = str(key["publish_until"] or "-")[:19]
        kid = key["kid"] + (" *" if key["signing"] else "")
        click.echo(f"{kid:<44} {key['alg']:<6} {key['status']:<8} {published:<9} {created:<20} {until}")
    click.echo("(* signs new tokens)")


@app.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
def keys_list(as_json: bool) -> None:
    """List the signing keys: status, whether in the JWKS, and until when (creates the first if none)."""
    settings = load_settings()
    log_to_stderr(settings)
    body, _ = asyncio.run(_signing_keys(settings, rotate=False))
    if as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        _print_keys(body)


@app.command("rotate")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
def keys_rotate(as_json: bool) -> None:
    """Sign new tokens with a new key; the old ones stay in the JWKS until their tokens have expired.

    Running servers are told on the bus (Redis) and reload their keys. An embedded server (in-process
    bus) cannot hear this command: restart it, or rotate through POST /v1/admin/signing-keys/rotate.
    """
    settings = load_settings()
    log_to_stderr(settings)
    body, notified = asyncio.run(_signing_keys(settings, rotate=True))
    if as_json:
        click.echo(json.dumps({**body, "servers_notified": notified}, indent=2))
        return
    click.secho(f"rotated: new tokens are signed with {body['active_kid']}", fg="green")
    if settings.bus_kind == "redis":
        click.echo(f"servers notified on the bus: {notified}")
    else:
        click.secho(
            "note: no Redis bus configured; a running embedded server picks up the new key when it "
            "restarts (or use POST /v1/admin/signing-keys/rotate on the server)",
            err=True,
            fg="yellow",
        )
    _print_keys(body)
