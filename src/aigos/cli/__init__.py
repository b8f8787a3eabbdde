"""The ``aigos`` command: run and operate the server, print its API, and verify audit exports.

One module per command or command group (``serve``, ``migrate``, ``openapi``, ``audit``, ``keys``). Server
commands need ``pip install "aigos[server]"`` and import the server only when they run; the light install
still answers ``aigos version`` and ``aigos audit verify``.
"""

from __future__ import annotations

import typer

from aigos import __version__
from aigos.cli import audit, keys, migrate, openapi, serve

app = typer.Typer(
    name="aigos",
    help="AIGOS: identity and governance control plane for AI agents.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the AIGOS version."""
    typer.echo(__version__)


app.command()(serve.serve)
app.command()(migrate.migrate)
app.command()(openapi.openapi)
app.add_typer(audit.app, name="audit")
app.add_typer(keys.app, name="keys")


def main() -> None:
    """Console-script entry point."""
    app()
