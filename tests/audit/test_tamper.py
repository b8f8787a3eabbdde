"""Tampering with the stored log, as someone with database access would, is refused or detected.

PostgreSQL: the application role cannot UPDATE or DELETE entries, and the superuser's UPDATE or DELETE is
refused by the append-only trigger. A superuser who disables triggers can change rows: then every kind of
change (an edited entry, a deleted one, two swapped, a whole tail rewritten with recomputed hashes) makes
``aigos audit verify`` on a fresh export exit 1 naming the exact entry. SQLite: the same with its triggers.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from aigos.cli import app as cli
from aigos.core import auditlog, signing
from aigos.core.canonical import canonical
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import APP_ROLE
from tests.audit.helpers import admin_dsn, download, published_keys, record, records, sqlite_path
from tests.helpers import TenantHandle, signup

runner = CliRunner()
postgres = pytest.mark.parametrize("settings", ["postgres"], indirect=True)
embedded = pytest.mark.parametrize("settings", ["embedded"], indirect=True)


@dataclass
class Log:
    """A tenant with nine entries, sealed at 3, 6 and 9, and its export before any tampering."""

    tenant: TenantHandle
    entries: dict[int, dict[str, Any]]
    keys: dict[str, bytes]


@pytest.fixture
async def log(client: AsyncClient, app: FastAPI) -> Log:
    """Nine entries with three checkpoints, all verified before the test tampers with them."""
    tenant = await signup(client, "Alpha")
    for count in (2, 3, 3):
        await record(app, tenant, count)
        assert (await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)).status_code == 200
    keys = await published_keys(client)
    lines = await download(client, tenant.headers)
    assert auditlog.verify_export(lines, keys).ok
    entries = {r["seq"]: r for r in records(lines) if r["kind"] == "event"}
    assert sorted(entries) == list(range(1, 10))
    return Log(tenant, entries, keys)


async def verify_fresh_export(client: AsyncClient, log: Log, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """Export again, run ``aigos audit verify`` on the file; the failure (exit 1) and the printed line."""
    lines = await download(client, log.tenant.headers)
    path = tmp_path / f"export-{uuid.uuid4().hex}.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    pins = [f"{key_id}={signing.b64url(raw)}" for key_id, raw in log.keys.items()]
    plain = runner.invoke(cli, ["audit", "verify", str(path), "--public-key", pins[0]])
    assert plain.exit_code == 1, plain.output
    as_json = runner.invoke(cli, ["audit", "verify", str(path), "--json", "--public-key", pins[0]])
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    # The server's own verification of the same stream finds the same place.
    served = (await client.post("/v1/audit/verify", headers=log.tenant.headers)).json()
    assert served["failure"] == report["failure"]
    failure: dict[str, Any] = report["failure"]
    return failure, plain.stdout


def line_of(lines: list[bytes], kind: str, seq: int) -> int:
    """The 1-based line of the record of ``kind`` at ``seq`` (entries) or ``tree_size`` (checkpoints)."""
    for number, parsed in enumerate(records(lines), start=1):
        if parsed["kind"] == kind and parsed.get("seq" if kind == "event" else "tree_size") == seq:
            return number
    raise AssertionError(f"no {kind} at {seq}")


# -- PostgreSQL -----------------------------------------------------------------------------------------


async def superuser(settings: Settings) -> asyncpg.Connection:
    """A superuser connection to the test's database."""
    return await asyncpg.connect(admin_dsn(settings.resolved_database_url.rsplit("/", 1)[1]))


async def edit_data(conn: asyncpg.Connection, log: Log) -> tuple[int, str | None, str]:
    tenant_id = uuid.UUID(log.tenant.id)
    await conn.execute(
        "UPDATE audit_events SET data = $1 WHERE tenant_id = $2 AND seq = 4", '{"n":99}', tenant_id
    )
    return 4, log.entries[4]["event_id"], "content does not match its hash"


async def delete_one(conn: asyncpg.Connection, log: Log) -> tuple[int, str | None, str]:
    await conn.execute("DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 5", uuid.UUID(log.tenant.id))
    # The gap shows at the next entry, which says which seq is missing.
    return 6, log.entries[6]["event_id"], "expected seq 5, found 6"


async def swap_two(conn: asyncpg.Connection, log: Log) -> tuple[int, str | None, str]:
    tenant_id = uuid.UUID(log.tenant.id)
    for old, new in ((4, -4), (5, 4), (-4, 5)):
        await conn.execute(
            "UPDATE audit_events SET seq = $1 WHERE tenant_id = $2 AND seq = $3", new, tenant_id, old
        )
    # The entry now at seq 4 (originally 5) chains onto the original entry 4, not onto entry 3.
    return 4, log.entries[5]["event_id"], "prev_hash does not match"


async def rewrite_tail(conn: asyncpg.Connection, log: Log) -> tuple[int, str | None, str]:
    """Change entry 5 and recompute every later hash, so the chain itself is consistent again."""
    tenant_id = uuid.UUID(log.tenant.id)
    previous = log.entries[4]["hash"]
    for seq in range(5, 10):
        entry = {k: v for k, v in log.entries[seq].items() if k not in ("kind", "hash")}
        if seq == 5:
            entry["data"] = {"n": "rewritten"}
        entry["prev_hash"] = previous
        previous = auditlog.entry_hash(entry)
        await conn.execute(
            "UPDATE audit_events SET data = $1, prev_hash = $2, hash = $3 WHERE tenant_id = $4 AND seq = $5",
            canonical(entry["data"]).decode(),
            entry["prev_hash"],
            previous,
            tenant_id,
            seq,
        )
    await conn.execute("UPDATE audit_heads SET hash = $1 WHERE tenant_id = $2", previous, tenant_id)
    # Every entry checks out on its own; the first signed checkpoint after the change (at 6) does not.
    return 6, None, "checkpoint head differs from the chain: the log was rewritten"


TAMPERS: dict[str, Callable[[asyncpg.Connection, Log], Awaitable[tuple[int, str | None, str]]]] = {
    "edit": edit_data,
    "delete": delete_one,
    "swap": swap_two,
    "rewrite-tail": rewrite_tail,
}


@postgres
@pytest.mark.parametrize("tamper", list(TAMPERS))
async def test_postgres_tampering_is_detected(
    client: AsyncClient, log: Log, settings: Settings, tmp_path: Path, tamper: str
) -> None:
    conn = await superuser(settings)
    try:
        # Replica mode skips ordinary triggers: the one way past the append-only trigger, superuser only.
        await conn.execute("SET session_replication_role = replica")
        seq, event_id, reason = await TAMPERS[tamper](conn, log)
    finally:
        await conn.close()

    lines = await download(client, log.tenant.headers)
    kind = "event" if event_id is not None else "checkpoint"
    failure, printed = await verify_fresh_export(client, log, tmp_path)
    assert failure["seq"] == seq
    assert failure["event_id"] == event_id
    assert reason in failure["reason"]
    assert failure["line"] == line_of(lines, kind, seq)
    assert f"line {failure['line']}: entry seq={seq} event_id={event_id}: " in printed


@postgres
async def test_postgres_refuses_update_and_delete(
    client: AsyncClient, log: Log, settings: Settings, tmp_path: Path
) -> None:
    tenant_id = uuid.UUID(log.tenant.id)
    app_db = Database(settings.resolved_database_url, role=APP_ROLE)
    try:
        for statement in (
            "UPDATE audit_events SET data = '{}' WHERE tenant_id = :t",
            "DELETE FROM audit_events WHERE tenant_id = :t",
            "UPDATE audit_checkpoints SET root_hash = head_hash WHERE tenant_id = :t",
            "DELETE FROM audit_checkpoints WHERE tenant_id = :t",
        ):
            with pytest.raises(DBAPIError, match="permission denied"):
                async with app_db.session(tenant_id) as session:
                    await session.execute(text(statement), {"t": tenant_id})
    finally:
        await app_db.dispose()

    conn = await superuser(settings)
    try:
        for statement in (
            "UPDATE audit_events SET data = '{}' WHERE tenant_id = $1",
            "DELETE FROM audit_events WHERE tenant_id = $1",
            "UPDATE audit_checkpoints SET root_hash = head_hash WHERE tenant_id = $1",
            "DELETE FROM audit_checkpoints WHERE tenant_id = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement, tenant_id)
    finally:
        await conn.close()

    lines = await download(client, log.tenant.headers)
    assert auditlog.verify_export(lines, log.keys).ok
    assert len([r for r in records(lines) if r["kind"] == "event"]) == 9


# -- SQLite ---------------------------------------------------------------------------------------------


@embedded
async def test_sqlite_triggers_refuse_and_edits_are_detected(
    client: AsyncClient, log: Log, settings: Settings, tmp_path: Path
) -> None:
    tenant = uuid.UUID(log.tenant.id).hex  # how SQLAlchemy stores a UUID on SQLite
    db = sqlite3.connect(sqlite_path(settings))
    try:
        for statement in (
            "UPDATE audit_events SET data = '{}' WHERE tenant_id = ?",
            "DELETE FROM audit_events WHERE tenant_id = ?",
            "UPDATE audit_checkpoints SET root_hash = head_hash WHERE tenant_id = ?",
            "DELETE FROM audit_checkpoints WHERE tenant_id = ?",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(statement, (tenant,))
            db.rollback()
        assert db.execute("SELECT count(*) FROM audit_events WHERE tenant_id = ?", (tenant,)).fetchone() == (
            9,
        )

        db.execute("DROP TRIGGER audit_events_no_update")
        db.execute("UPDATE audit_events SET data = ? WHERE tenant_id = ? AND seq = 2", ('{"n":99}', tenant))
        db.commit()
    finally:
        db.close()

    lines = await download(client, log.tenant.headers)
    failure, printed = await verify_fresh_export(client, log, tmp_path)
    assert (failure["seq"], failure["event_id"]) == (2, log.entries[2]["event_id"])
    assert "content does not match its hash" in failure["reason"]
    assert failure["line"] == line_of(lines, "event", 2) == 3
    assert f"line 3: entry seq=2 event_id={log.entries[2]['event_id']}: " in printed
