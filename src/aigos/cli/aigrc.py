"""``aigos aigrc``: check AIGRC asset cards offline (``validate``) and import a directory of them into a
server (``import``), as AIGRC keeps them: ``*.yaml`` / ``*.yml`` under ``.aigrc/cards/``.

``import`` works with the light install (``pip install aigos``): it sends each file as written and the
server validates it, naming every field in error. ``validate`` parses the cards here and needs PyYAML
(``pip install "aigos[server]"`` has it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from aigos.cli.group import Group
from aigos.cli.settings import fail

app = Group("aigrc", help="Validate and import AIGRC asset cards.")

#: Where AIGRC keeps a repository's cards.
CARDS_DIR = Path(".aigrc") / "cards"


def card_files(directory: Path) -> list[Path]:
    """The cards under ``directory``: its ``.aigrc/cards`` when it has one (a repository's root), else
    the directory itself; ``*.yaml`` and ``*.yml``, sorted by name."""
    if not directory.is_dir():
        raise fail(f"{directory} is not a directory")
    folder = directory / CARDS_DIR if (directory / CARDS_DIR).is_dir() else directory
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from exc


def _problems(body: dict[str, Any]) -> list[str]:
    errors = body.get("errors") or []
    found = [f"{e.get('pointer') or '/'}: {e.get('detail')}" for e in errors if isinstance(e, dict)]
    return found or [str(body.get("detail") or body.get("title") or "refused")]


@app.command("validate")
@click.argument("directory", type=click.Path(path_type=Path), default=Path("."))
def aigrc_validate(directory: Path) -> None:
    """Check every card in DIRECTORY against the AIGRC asset card schema; exits 1 naming each field in
    error."""
    try:
        from aigos.core import assetcard
    except ImportError as exc:  # the light install has no YAML reader
        raise fail(f'validate needs PyYAML: pip install "aigos[server]" ({exc})') from exc
    files = card_files(directory)
    failed = 0
    for path in files:
        try:
            card = assetcard.parse(_read(path), filename=path.name)
        except assetcard.CardInvalid as invalid:
            failed += 1
            click.secho(f"{path.name}: invalid", fg="red")
            for error in invalid.errors:
                click.echo(f"  {error.pointer or '/'}: {error.detail}")
            continue
        click.echo(f"{path.name}: {card.id} ({card.risk_level}, {card.status}) {card.content_hash()}")
    if not files:
        raise fail(f"no *.yaml or *.yml cards in {directory}")
    if failed:
        raise click.exceptions.Exit(1)


@app.command("import")
@click.argument("directory", type=click.Path(path_type=Path), default=Path("."))
@click.option(
    "--url", envvar="AIGOS_URL", show_envvar=True, required=True, help="The server (http://host:port)."
)
@click.option(
    "--api-key",
    envvar="AIGOS_API_KEY",
    show_envvar=True,
    required=True,
    help="An API key with `aigrc:write`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per card.")
def aigrc_import(directory: Path, url: str, api_key: str, as_json: bool) -> None:
    """Upload every card in DIRECTORY (a repository's root or its `.aigrc/cards`) to the server.

    A card is saved by its `id`: new ones are created, changed ones get a new version, unchanged ones are
    left alone, so the import can run on every commit. Exits 1 if any card was refused.
    """
    import httpx

    files = card_files(directory)
    if not files:
        raise fail(f"no *.yaml or *.yml cards in {directory}")
    endpoint = url.rstrip("/") + "/v1/aigrc/asset-cards"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/yaml"}
    refused = 0
    with httpx.Client(timeout=30.0) as client:
        for path in files:
            try:
                response = client.post(
                    endpoint, params={"source": "directory"}, headers=headers, content=_read(path)
                )
            except httpx.HTTPError as exc:
                raise fail(f"cannot reach {endpoint}: {exc}") from exc
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:200]}
            ok = response.status_code in (200, 201)
            refused += not ok
            if as_json:
                click.echo(json.dumps({"file": path.name, "status": response.status_code, **body}))
            elif ok:
                click.echo(f"{path.name}: {body['id']} {body['change']} (version {body['version']})")
            else:
                click.secho(f"{path.name}: refused ({response.status_code} {body.get('code', '')})", fg="red")
                for problem in _problems(body):
                    click.echo(f"  {problem}")
    if refused:
        raise click.exceptions.Exit(1)
