"""``aigos audit``: verify the tamper-evident event log (``verify``) and prune it past retention (``prune``).

``verify`` must work with the light install (``pip install aigos``): at import and on its path this module
uses only ``aigos.core``, httpx and the standard library, never ``aigos.server``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from aigos.cli.group import Group
from aigos.cli.settings import fail, load_settings

if TYPE_CHECKING:
    from aigos.core import auditlog

app = Group("audit", help="Verify the tamper-evident event log.")
_PINNING_NOTE = (
    "note: checked against the keys in the export's own header, which proves the log was not altered by "
    "anyone without the server's signing key. Pinning the keys published at GET /v1/audit/keys with "
    "--public-key KEY_ID=B64URL is stronger: it also holds the server itself to them."
)


def _pinned_keys(values: tuple[str, ...]) -> dict[str, bytes]:
    """``KEY_ID=B64URL`` options as a key-id-to-raw-key map; usage error (exit 2) when one is malformed."""
    from aigos.core import signing

    keys: dict[str, bytes] = {}
    for value in values:
        kid, sep, encoded = value.partition("=")
        kid, encoded = kid.strip(), encoded.strip()
        if not sep or not kid or not encoded:
            raise fail(f"--public-key takes KEY_ID=B64URL, got {value!r}")
        try:
            raw = signing.unb64url(encoded)
        except ValueError as exc:
            raise fail(f"--public-key {kid}: not base64url") from exc
        if len(raw) != 32:
            raise fail(f"--public-key {kid}: an Ed25519 public key is 32 bytes, this one is {len(raw)}")
        if signing.key_id(raw) != kid:
            raise fail(f"--public-key {kid}: that key's id is {signing.key_id(raw)}, not {kid}")
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
                raise fail(f"{endpoint} answered {response.status_code}: {detail}")
            return auditlog.verify_export(
                split_lines(response.iter_bytes(), auditlog.MAX_LINE_BYTES), trusted
            )
    except httpx.HTTPError as exc:
        raise fail(f"cannot download {endpoint}: {exc}") from exc


def split_lines(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """The lines of a byte stream that arrives in chunks, each with its newline (the last may lack one).

    A line is never held beyond ``limit + 1`` bytes: a longer one is cut there, which the verifier rejects
    as too long, and the stream is not read further.
    """
    partial: list[bytes] = []
    held = 0
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if partial:
                partial.append(chunk[start : end + 1])
                line = b"".join(partial)
                partial, held = [], 0
            else:
                line = chunk[start : end + 1]
            if len(line) > limit:
                yield line[: limit + 1]
                return
            yield line
            start = end + 1
        if start < len(chunk):
            partial.append(chunk[start:])
            held += len(chunk) - start
            if held > limit:
                yield b"".join(partial)[: limit + 1]
                return
    if partial:
        yield b"".join(partial)


def read_lines(stream: BinaryIO, limit: int) -> Iterator[bytes]:
    """The lines of a binary file, none held beyond ``limit + 1`` bytes (a longer one is cut there)."""
    while line := stream.readline(limit + 1):
        yield line


def _verify_file(path: Path, trusted: dict[str, bytes] | None) -> auditlog.Report:
    """Verify an export file (``-``: standard input), reading it line by line: memory does not grow with
    the file's size."""
    import sys

    from aigos.core import auditlog

    limit = auditlog.MAX_LINE_BYTES
    if str(path) == "-":
        return auditlog.verify_export(read_lines(sys.stdin.buffer, limit), trusted)
    try:
        with path.open("rb") as stream:
            return auditlog.verify_export(read_lines(stream, limit), trusted)
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from exc


@app.command("verify")
@click.argument(
    "file",
    required=False,
    type=click.Path(path_type=Path),
    help="An export (NDJSON from GET /v1/audit/export); `-` reads standard input.",
)
@click.option(
    "--url", help="Download the export from this server (http://host:port) and verify it as it streams."
)
@click.option(
    "--api-key", envvar="AIGOS_API_KEY", show_envvar=True, help="An API key with `audit:read`, for --url."
)
@click.option(
    "--public-key",
    multiple=True,
    metavar="KEY_ID=B64URL",
    help="Trust only this checkpoint-signing key (repeatable); see GET /v1/audit/keys.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit_verify(
    file: Path | None, url: str | None, api_key: str | None, public_key: tuple[str, ...], as_json: bool
) -> None:
    """Verify an audit export: every entry's hash, the chain, and every signed checkpoint.

    Exits 0 when everything verifies, 1 when it does not (naming the line, seq and event id of the first
    failure), 2 on usage errors.
    """
    if (file is None) == (url is None):
        raise fail("give an export FILE or --url, one of them")
    if url is not None and not api_key:
        raise fail("--url needs --api-key (or AIGOS_API_KEY)")
    trusted = _pinned_keys(public_key) if public_key else None
    if url is not None:
        assert api_key is not None
        report = _verify_download(url, api_key, trusted)
    else:
        assert file is not None
        report = _verify_file(file, trusted)
    if trusted is None:
        click.secho(_PINNING_NOTE, err=True, fg="yellow")
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    elif report.ok:
        span = f"seq {report.first_seq}..{report.last_seq}" if report.entries else "no entries"
        summary = (
            f"OK: tenant {report.tenant_id}: {report.entries} entries ({span}), "
            f"{report.checkpoints} signed checkpoints, sealed through seq {report.sealed_through}"
        )
        if report.unsealed:
            summary += f"; the last {report.unsealed} entries are chained but not yet signed"
        click.secho(f"{summary}; keys: {', '.join(report.key_ids) or 'none'}", fg="green")
    else:
        click.secho(f"FAILED: {report.failure}", fg="red")
    if report.losses and not as_json:
        _print_losses(report)
    if not report.ok:
        raise click.exceptions.Exit(1)


def _print_losses(report: auditlog.Report) -> None:
    """The log's own record of acknowledged events it does not hold: never verified away in silence."""
    click.secho(
        f"LOSSES: {len(report.losses)} entries record {report.lost} acknowledged events that were lost:",
        fg="yellow",
    )
    for loss in report.losses:
        span = f", {loss['from']} .. {loss['to']}" if loss.get("from") or loss.get("to") else ""
        process = f", process {loss['process']}" if loss.get("process") else ""
        click.secho(
            f"  seq {loss['seq']}: {loss['event_type']}: {loss.get('count')} "
            f"({loss.get('reason', 'no reason given')}{process}{span})",
            fg="yellow",
        )


@app.command("prune")
@click.option(
    "--retention-days",
    type=click.IntRange(min=1),
    help="Days to keep (default: AIGOS_AUDIT_RETENTION_DAYS).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def audit_prune(retention_days: int | None, as_json: bool) -> None:
    """Prune event-log entries past retention now, as the server does hourly (server install only).

    Each tenant's log is anchored and sealed before its old entries go, so what remains still verifies.
    Exits 1 when a tenant's entries did not verify and were therefore kept.
    """
    settings = load_settings()
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
        click.echo(json.dumps(body, indent=2))
    elif result.skipped:
        click.echo("another process is pruning right now; nothing done")
    else:
        click.echo(
            f"entries recorded before {result.cutoff.isoformat()}: {result.entries} anchored in "
            f"{result.tenants} tenants, {result.removed} removed, {result.left_behind} left in storage"
        )
    if result.refused:
        for tenant in result.refused:
            click.secho(f"FAILED: tenant {tenant}: its log does not verify; kept", err=True, fg="red")
        raise click.exceptions.Exit(1)
