"""The ``aigos`` command: run and operate the server, print its API, and verify audit exports.

One module per command or command group (``serve``, ``migrate``, ``openapi``, ``audit``, ``keys``,
``aigrc``), on
click alone, so the light install (``pip install aigos``) carries no more than click for its command line.
Server commands need ``pip install "aigos[server]"`` and import the server only when they run; the light
install still answers ``aigos version`` and ``aigos audit verify``.
"""

from __future__ import annotations

import click

from aigos import __version__
from aigos.cli import aigrc, audit, keys, migrate, openapi, serve
from aigos.cli.group import Group

app = Group("aigos", help="AIGOS: identity and governance control plane for AI agents.")


@app.command()
def version() -> None:
    """Print the AIGOS version."""
    click.echo(__version__)


app.add_command(serve.serve)
app.add_command(migrate.migrate)
app.add_command(openapi.openapi)
app.add_command(audit.app)
app.add_command(keys.app)
app.add_command(aigrc.app)


def main() -> None:
    """Console-script entry point."""
    app()
