"""``aigos openapi``: print the OpenAPI document (``docs/openapi.yaml`` is its output)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from aigos.cli.settings import load_settings


class SpecFormat(StrEnum):
    """Output formats of ``aigos openapi``."""

    yaml = "yaml"
    json = "json"


def openapi(
    fmt: Annotated[SpecFormat, typer.Option("--format", help="Output format.")] = SpecFormat.yaml,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
) -> None:
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
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
