"""``aigos migrate``: apply the database migrations."""

from __future__ import annotations

import asyncio

import click

from aigos.cli.settings import load_settings


@click.command()
# Arguments have no show_default in click; the suffix reads as the options' do.
@click.argument("revision", default="head", help="Target revision.  [default: head]")
def migrate(revision: str) -> None:
    """Apply database migrations (AIGOS_DATABASE_MIGRATION_URL, else AIGOS_DATABASE_URL)."""
    settings = load_settings()
    from aigos.server.datadir import prepare
    from aigos.server.db.migrate import current_revision, upgrade

    prepare(settings)

    url = settings.resolved_migration_url
    asyncio.run(upgrade(url, revision))
    click.echo(f"database at revision {asyncio.run(current_revision(url))}")
