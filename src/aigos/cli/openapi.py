"""``aigos openapi``: print the OpenAPI document (``docs/openapi.yaml`` is its output)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import click

from aigos.cli.settings import load_settings


class SpecFormat(StrEnum):
    """Output formats of ``aigos openapi``."""

    yaml = "yaml"
    json = "json"


@click.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(SpecFormat),
    default=SpecFormat.yaml,
    show_default=True,
    help="Output format.",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write to a file.")
def openapi(fmt: SpecFormat, output: Path | None) -> None:
    """Print the OpenAPI specification (docs/openapi.yaml is this command's output)."""
    settings = load_settings(need_secret=False)
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
        click.echo(text, nl=False)
    else:
        output.write_text(text)
