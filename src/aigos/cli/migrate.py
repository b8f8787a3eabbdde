"""``aigos migrate``: apply the database migrations."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from aigos.cli.settings import load_settings


def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply database migrations (AIGOS_DATABASE_MIGRATION_URL, else AIGOS_DATABASE_URL)."""
    settings = load_settings()
    from aigos.server.datadir import prepare
    from aigos.server.db.migrate import current_revision, upgrade

    prepare(settings)

    url = settings.resolved_migration_url
    asyncio.run(upgrade(url, revision))
    typer.echo(f"database at revision {asyncio.run(current_revision(url))}")
