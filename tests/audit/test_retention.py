"""Retention: daily partitions ahead of need, and pruning that leaves a log that still verifies."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import insert, text

from aigos import cli
from aigos.core import auditlog, merkle
from aigos.core.canonical import canonical
from aigos.core.merkle import CompactRange
from aigos.core.signing import Signer
from aigos.server.audit import chain, checkpoints
from aigos.server.audit.log import EventLog
from aigos.server.audit.models import AuditAnchor, AuditEvent, AuditHead
from aigos.server.audit.retention import PRUNED_TYPE, Maintenance, cutoff_day, ensure_partitions, prune
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.migrate import upgrade
from aigos.server.db.types import utcnow
from tests.audit.helpers import (
    assert_valid_log,
    event,
    export_lines,
    stored,
    stored_checkpoints,
)
from tests.conftest import SECRET_KEY, embedded_settings

RETENTION_DAYS = 30


@pytest.fixture
async def owner(settings: Settings, database: Database) -> AsyncIterator[Database]:
    """The same database as its owner (bypasses row-level security; used to set up history)."""
    db = Database(settings.resolved_database_url)
    yield db
    await db.dispose()


def later() -> datetime:
    """A 'now' far enough ahead that every entry written today is past retention."""
    return datetime.now(UTC) + timedelta(days=RETENTION_DAYS + 2)


async def partitions(database: Database) -> set[str]:
    """Names of the daily partitions of ``audit_events``."""
    async with database.session() as session:
        rows = await session.scalars(
            text("SELECT relname FROM pg_class WHERE relname ~ '^audit_events_p[0-9]{8}$' AND relkind = 'r'")
        )
        return set(rows.all())


def partition_name(day: date) -> str:
    return f"audit_events_p{day:%Y%m%d}"


async def anchor_of(database: Database, tenant: uuid.UUID) -> AuditAnchor | None:
    async with database.session(tenant) as session:
        return await session.get(AuditAnchor, tenant)


async def write_history(
    owner: Database, tenant: uuid.UUID, count: int, recorded_at: datetime, *, tamper: int | None = None
) -> list[str]:
    """Entries of ``tenant`` recorded at ``recorded_at`` (as the database owner: the app cannot backdate).

    Built exactly as the appender builds them; entry ``tamper``'s data is altered after hashing.
    Returns the hashes.
    """
    prev, compact, hashes = auditlog.GENESIS_HASH, CompactRange(), []
    rows: list[dict[str, Any]] = []
    stamp = chain.isoformat(recorded_at)
    for seq in range(1, count + 1):
        event_id = uuid.uuid4()
        entry = {
            "tenant_id": str(tenant),
            "seq": seq,
            "event_id": str(event_id),
            "event_type": "test.old",
            "agent_id": None,
            "timestamp": stamp,
            "recorded_at": stamp,
            "actor": {"type": "system", "id": "test"},
            "source": "server",
            "outcome": "success",
            "request_id": None,
            "trace_id": None,
            "span_id": None,
            "data": {"n": seq},
            "prev_hash": prev,
        }
        hashed = auditlog.entry_hash(entry)
        compact.append(auditlog.entry_leaf(hashed))
        data = {"n": -1} if seq == tamper else {"n": seq}
        rows.append(
            {
                "tenant_id": tenant,
                "seq": seq,
                "recorded_at": recorded_at,
                "event_id": event_id,
                "event_type": "test.old",
                "agent_id": None,
                "occurred_at": recorded_at,
                "actor_type": "system",
                "actor_id": "test",
                "source": "server",
                "outcome": "success",
                "request_id": None,
                "trace_id": None,
                "span_id": None,
                "data": canonical(data).decode(),
                "prev_hash": prev,
                "hash": hashed,
            }
        )
        prev = hashed
        hashes.append(hashed)
    async with owner.session() as session:
        await session.execute(insert(AuditEvent), rows)
        await session.execute(
            insert(AuditHead).values(
                tenant_id=tenant,
                seq=count,
                hash=prev,
                recorded_at=recorded_at,
                compact_range=compact.to_json(),
            )
        )
    return hashes


# -- partitions --------------------------------------------------------------------------------------


async def test_ensure_partitions_creates_the_coming_days(settings: Settings, database: Database) -> None:
    far = date(2100, 1, 1)
    if settings.database_kind == "sqlite":
        assert await ensure_partitions(database, far) == 0
        return
    expected = {partition_name(far + timedelta(days=offset)) for offset in range(-1, 8)}
    assert not expected & await partitions(database)
    assert await ensure_partitions(database, far) == 9
    assert expected <= await partitions(database)
    assert partition_name(date(2099, 12, 31)) in expected
    assert partition_name(date(2100, 1, 8)) in expected
    assert await ensure_partitions(database, far) == 0
    assert await ensure_partitions(database, far, days_ahead=10) == 3
    assert partition_name(date(2100, 1, 11)) in await partitions(database)
    # Today's partition exists from the migration on.
    today = utcnow().date()
    assert partition_name(today) in await partitions(database)


async def test_a_day_with_rows_in_the_default_partition_does_not_block_the_others(
    settings: Settings, database: Database, owner: Database
) -> None:
    stray = date(2101, 1, 1)
    if settings.database_kind == "sqlite":
        # SQLite has no partitions: nothing to create, nothing to block.
        assert await ensure_partitions(database, stray) == 0
        return
    # No partition of that day exists yet, so the row goes to DEFAULT; PostgreSQL then refuses to create
    # the day's partition (the DEFAULT partition would hold a row belonging to it).
    await write_history(owner, uuid.uuid4(), 1, datetime(2101, 1, 1, 12, tzinfo=UTC))
    assert await ensure_partitions(database, stray) == 8
    names = await partitions(database)
    assert partition_name(stray) not in names
    assert {partition_name(stray + timedelta(days=offset)) for offset in (-1, 1, 7)} <= names


async def test_the_server_keeps_partitions_and_runs_maintenance(
    settings: Settings, app: FastAPI, client: AsyncClient
) -> None:
    runtime = app.state.runtime
    assert isinstance(runtime.maintenance, Maintenance)
    assert runtime.maintenance.retention_days == settings.audit_retention_days
    assert runtime.maintenance.interval == 3600.0
    await runtime.maintenance.flush()
    if settings.database_kind == "postgresql":
        names = await partitions(runtime.database)
        today = utcnow().date()
        assert {partition_name(today + timedelta(days=offset)) for offset in range(-1, 8)} <= names


# -- pruning -----------------------------------------------------------------------------------------


async def test_prune_anchors_removes_and_the_rest_still_verifies(
    settings: Settings, database: Database, events: EventLog, signer: Signer
) -> None:
    alpha, beta = uuid.uuid4(), uuid.uuid4()
    for n in range(5):
        await events.record(event(alpha, data={"n": n}))
    # A checkpoint inside the pruned range: the anchor is computed from it onwards.
    assert await events.seal_all() == 1
    for n in range(5, 8):
        await events.record(event(alpha, data={"n": n}))
    for n in range(2):
        await events.record(event(beta, data={"n": n}))
    old_alpha = await stored(database, alpha)
    old_beta = await stored(database, beta)

    now = later()
    result = await prune(database, signer, RETENTION_DAYS, now)
    assert result.cutoff == cutoff_day(now, RETENTION_DAYS)
    assert (result.tenants, result.entries, result.removed) == (2, 10, 10)
    assert (result.left_behind, result.refused, result.skipped) == (0, [], False)
    if settings.database_kind == "postgresql":
        assert result.partitions_dropped >= 1
        # Today's partition was dropped with the rest, and made again at once.
        assert partition_name(utcnow().date()) in await partitions(database)

    for tenant, old in ((alpha, old_alpha), (beta, old_beta)):
        anchor = await anchor_of(database, tenant)
        assert anchor is not None
        assert (anchor.seq, anchor.head_hash) == (old[-1].seq, old[-1].hash)
        compact = CompactRange.from_json(anchor.compact_range)
        assert compact.size == anchor.seq
        assert compact.root() == merkle.root_of([auditlog.entry_leaf(row.hash) for row in old])
        # A signed checkpoint at exactly the anchor.
        sealed = {cp.tree_size: cp for cp in await stored_checkpoints(database, tenant)}
        assert anchor.seq in sealed
        published = checkpoints.to_json(sealed[anchor.seq])
        assert auditlog.verify_checkpoint(published, {signer.key_id: signer.public_key}) is None
        assert published["root_hash"] == compact.root().hex()
        assert published["head_hash"] == anchor.head_hash
        # The old entries are gone; what remains is the record of the pruning, chained to the anchor.
        (pruned,) = await stored(database, tenant)
        entry = chain.entry_of(pruned)
        assert (entry["seq"], entry["event_type"]) == (anchor.seq + 1, PRUNED_TYPE)
        assert entry["prev_hash"] == anchor.head_hash
        assert entry["data"] == {
            "through_seq": anchor.seq,
            "cutoff": result.cutoff.isoformat(),
            "retention_days": RETENTION_DAYS,
            "entries": len(old),
        }
        assert entry["actor"] == {"type": "system", "id": "retention"}

    # The log goes on from the anchor, and an export starting at the anchor verifies.
    for n in range(2):
        await events.record(event(alpha, "test.after", data={"n": n}))
    report = assert_valid_log(await export_lines(database, alpha, signer), signer, 3)
    assert (report.first_seq, report.last_seq, report.checkpoints) == (9, 11, 1)
    assert (report.sealed_through, report.unsealed) == (8, 3)

    # With the real clock nothing is due.
    nothing = await prune(database, signer, RETENTION_DAYS, datetime.now(UTC))
    assert (nothing.tenants, nothing.entries, nothing.removed, nothing.left_behind) == (0, 0, 0, 0)

    # Pruning again moves each anchor on from the previous one (no checkpoint in between this time).
    again = await prune(database, signer, RETENTION_DAYS, later())
    assert (again.tenants, again.entries) == (2, 3 + 1)
    for tenant, through in ((alpha, 11), (beta, 3)):
        anchor = await anchor_of(database, tenant)
        assert anchor is not None
        assert anchor.seq == through
        (remaining,) = await stored(database, tenant)
        assert remaining.seq == through + 1
        assert remaining.prev_hash == anchor.head_hash
        assert chain.entry_of(remaining)["data"]["through_seq"] == through
    await events.record(event(alpha, "test.later"))
    await events.seal_all()
    report = assert_valid_log(await export_lines(database, alpha, signer), signer, 2)
    assert (report.first_seq, report.last_seq, report.checkpoints, report.sealed_through) == (12, 13, 2, 13)
    assert_valid_log(await export_lines(database, beta, signer), signer, 1)


async def test_prune_of_entries_from_long_ago(
    settings: Settings, database: Database, owner: Database, events: EventLog, signer: Signer
) -> None:
    tenant = uuid.uuid4()
    long_ago = datetime(2000, 1, 1, 12, 0, tzinfo=UTC)
    hashes = await write_history(owner, tenant, 3, long_ago)
    # The log goes on after the backdated history; the appender never records earlier than its head.
    await events.record(event(tenant, "test.recent"))

    result = await prune(database, signer, RETENTION_DAYS, datetime.now(UTC))
    assert (result.tenants, result.entries, result.refused) == (1, 3, [])
    anchor = await anchor_of(database, tenant)
    assert anchor is not None
    assert (anchor.seq, anchor.head_hash) == (3, hashes[-1])
    rows = await stored(database, tenant)
    if settings.database_kind == "postgresql":
        # No daily partition of that day existed: the rows sit in DEFAULT, which is never dropped. They stay,
        # with a warning, below the anchor; pruning does not fail.
        assert (result.removed, result.left_behind) == (0, 3)
        assert [row.seq for row in rows] == [1, 2, 3, 4, 5]
    else:
        assert (result.removed, result.left_behind) == (3, 0)
        assert [row.seq for row in rows] == [4, 5]
    assert rows[-1].event_type == PRUNED_TYPE
    await events.seal_all()
    assert_valid_log(await export_lines(database, tenant, signer), signer, 2)
    # Nothing new to anchor the second time.
    again = await prune(database, signer, RETENTION_DAYS, datetime.now(UTC))
    assert again.tenants == 0


async def test_prune_refuses_a_tenant_whose_entries_do_not_verify(
    settings: Settings, database: Database, owner: Database, events: EventLog, signer: Signer
) -> None:
    honest, tampered = uuid.uuid4(), uuid.uuid4()
    long_ago = datetime(2000, 1, 1, 12, 0, tzinfo=UTC)
    await write_history(owner, honest, 2, long_ago)
    await write_history(owner, tampered, 3, long_ago, tamper=2)

    result = await prune(database, signer, RETENTION_DAYS, datetime.now(UTC))
    assert result.refused == [tampered]
    assert (result.tenants, result.entries) == (1, 2)
    assert await anchor_of(database, tampered) is None
    # The evidence is kept, and no pruning event claims otherwise.
    assert [row.seq for row in await stored(database, tampered)] == [1, 2, 3]
    assert await stored_checkpoints(database, tampered) == []
    honest_anchor = await anchor_of(database, honest)
    assert honest_anchor is not None
    assert honest_anchor.seq == 2
    if settings.database_kind == "sqlite":
        assert (result.removed, result.left_behind) == (2, 3)
        assert [row.seq for row in await stored(database, honest)] == [3]
    else:
        # Partitions hold every tenant's rows: none is dropped while one tenant's log does not verify.
        assert (result.removed, result.partitions_dropped, result.left_behind) == (0, 0, 5)


# -- aigos audit prune -------------------------------------------------------------------------------


def test_the_prune_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = embedded_settings(tmp_path / "data")
    env = {"AIGOS_DATA_DIR": str(tmp_path / "data"), "AIGOS_SECRET_KEY": SECRET_KEY, "AIGOS_ENV": "test"}
    tenant = uuid.uuid4()

    async def history() -> None:
        await upgrade(settings.resolved_migration_url)
        owner = Database(settings.resolved_database_url)
        try:
            await write_history(owner, tenant, 4, datetime(2000, 1, 1, tzinfo=UTC))
        finally:
            await owner.dispose()

    asyncio.run(history())
    result = CliRunner().invoke(cli.app, ["audit", "prune", "--retention-days", "7", "--json"], env=env)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert date.fromisoformat(body["cutoff"]) >= cutoff_day(datetime.now(UTC), 8)
    assert (body["tenants"], body["entries"], body["removed"], body["refused"]) == (1, 4, 4, [])

    async def check() -> list[AuditEvent]:
        database = Database(settings.resolved_database_url)
        try:
            return await stored(database, tenant)
        finally:
            await database.dispose()

    (pruned,) = asyncio.run(check())
    assert (pruned.seq, pruned.event_type) == (5, PRUNED_TYPE)

    again = CliRunner().invoke(cli.app, ["audit", "prune"], env=env)
    assert again.exit_code == 0, again.output
    assert "0 anchored in 0 tenants, 0 removed" in again.output
