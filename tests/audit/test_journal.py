"""The event journal: what a process acknowledged and did not write survives it, or its loss is recorded.

These run in one process: a journal whose lock is released without its folder being removed is what a
killed process leaves behind. ``test_crash.py`` kills real server processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from httpx import AsyncClient

from aigos.cli import app as cli
from aigos.core.signing import Signer
from aigos.server.audit import journal, orphans
from aigos.server.audit.log import EventLog, checkpoint_signer
from aigos.server.audit.records import (
    AGGREGATED_TYPE,
    DROPPED_TYPE,
    LOST_TYPE,
    REPLAYED_TYPE,
    UNJOURNALED,
)
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.runtime import Runtime
from tests.audit.helpers import assert_valid_log, event, export_lines, open_database, proxied_settings, stored
from tests.helpers import signup
from tests.identity.helpers import bearer, register
from tests.tcp_proxy import TcpProxy

PAST = datetime(2020, 1, 1, 12, 30, tzinfo=UTC)
FUTURE = datetime(2999, 1, 1, 0, 0, tzinfo=UTC)


def decision(tenant: uuid.UUID, agent: str, at: datetime) -> object:
    return event(tenant, "policy.checked", outcome="allowed", agent_id=agent, occurred_at=at)


def owners(folder: Path) -> list[Path]:
    """The journals in ``folder`` (one per process that has not removed its own)."""
    return [path for path in folder.iterdir() if not path.name.startswith(".")] if folder.exists() else []


def die(log: EventLog) -> None:
    """What a killed process leaves: its journal's files, no longer locked."""
    assert log.journal is not None
    log.journal.close(remove=False)


async def test_a_journal_left_behind_is_replayed_once_and_nothing_is_written_twice(
    database: Database, signer: Signer, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    tenant = uuid.uuid4()
    dead = EventLog(database, signer, batch_size=10, queue_size=15, journal_dir=folder)
    assert dead.journal is not None
    dead.journal.open()
    queued = [event(tenant, data={"n": n}) for n in range(25)]
    for item in queued[:10]:
        assert dead.enqueue(item)
    for agent in ["agent-a", "agent-a", "agent-b", "agent-a"]:
        assert dead.enqueue(decision(tenant, agent, PAST), aggregate_allowed=True)  # type: ignore[arg-type]
    # Written before the process dies: ten events and the aggregate of a finished minute.
    await dead.flush()
    assert dead.journal.held == 0
    for item in queued[10:]:
        assert dead.enqueue(item)
    assert not dead.enqueue(event(tenant, data={"n": "dropped"}))  # the queue (15) is full
    for agent in ["agent-c", "agent-c"]:
        assert dead.enqueue(decision(tenant, agent, FUTURE), aggregate_allowed=True)  # type: ignore[arg-type]
    die(dead)

    alive = EventLog(database, signer, journal_dir=folder)
    # 15 events, the unfinished minute's aggregate, the count of the dropped event.
    assert await alive.replay_journals() == 17
    assert await alive.replay_journals() == 0
    assert owners(folder) == []

    rows = await stored(database, tenant)
    numbers = [json.loads(row.data)["n"] for row in rows if row.event_type == "test.happened"]
    assert sorted(numbers) == list(range(25))
    aggregated = [json.loads(row.data) for row in rows if row.event_type == AGGREGATED_TYPE]
    assert sorted((item["minute"], item["count"], item["by_agent"]) for item in aggregated) == [
        ("2020-01-01T12:30Z", 4, {"agent-a": 3, "agent-b": 1}),
        ("2999-01-01T00:00Z", 2, {"agent-c": 2}),
    ]
    dropped = [json.loads(row.data) for row in rows if row.event_type == DROPPED_TYPE]
    assert dropped == [{"count": 1, "reason": "queue full"}]
    (replayed,) = [json.loads(row.data) for row in rows if row.event_type == REPLAYED_TYPE]
    assert replayed == {"count": 17, "already_present": 11, "journal": dead.journal.owner}
    assert_valid_log(await export_lines(database, tenant, signer), signer, len(rows))


async def test_unreadable_journal_lines_become_loss_records_that_verify_reports(
    database: Database, signer: Signer, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    tenant = uuid.uuid4()
    dead = EventLog(database, signer, journal_dir=folder)
    assert dead.journal is not None
    dead.journal.open()
    (segment,) = dead.journal.path.glob("*.jsonl")
    for n in range(3):
        assert dead.enqueue(event(tenant, data={"n": n}))
    # A region a power loss left as zeros (nobody can be named), then a write torn mid-record.
    torn = b'["e",{"tenant_id":"' + str(tenant).encode() + b'","event_id":"6a1f'
    with segment.open("ab") as raw:
        raw.write(b"\0" * 100 + b"\n")
    assert dead.enqueue(event(tenant, data={"n": 3}))
    with segment.open("ab") as raw:
        raw.write(torn)
    die(dead)

    alive = EventLog(database, signer, journal_dir=folder)
    assert await alive.replay_journals() == 6
    assert alive.tallies.lost == 2

    rows = await stored(database, tenant)
    numbers = [json.loads(row.data)["n"] for row in rows if row.event_type == "test.happened"]
    assert numbers == [0, 1, 2, 3]
    (lost,) = [json.loads(row.data) for row in rows if row.event_type == LOST_TYPE]
    assert (lost["count"], lost["bytes"], lost["process"], lost["file"]) == (
        1,
        len(torn),
        dead.journal.owner,
        segment.name,
    )
    assert lost["from"] == rows[3].occurred_at.isoformat()  # after the last record read
    assert lost["to"] is not None
    (anonymous,) = [json.loads(row.data) for row in await stored(database, journal.SYSTEM_TENANT)][:1]
    assert (anonymous["count"], anonymous["bytes"]) == (1, 101)

    lines = await export_lines(database, tenant, signer)
    report = assert_valid_log(lines, signer, len(rows))
    assert [(loss["event_type"], loss["count"]) for loss in report.losses] == [(LOST_TYPE, 1)]
    assert report.lost == 1
    exported = tmp_path / "export.ndjson"
    exported.write_text("\n".join(lines) + "\n")
    verified = CliRunner().invoke(cli, ["audit", "verify", str(exported)])
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.startswith("OK: ")
    assert "LOSSES: 1 entries record 1 acknowledged events that were lost" in verified.stdout
    assert f"process {dead.journal.owner}" in verified.stdout


async def test_a_live_processes_journal_is_never_replayed_by_another(
    database: Database, signer: Signer, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    tenant = uuid.uuid4()
    running = EventLog(database, signer, journal_dir=folder)
    assert running.journal is not None
    running.journal.open()
    assert running.enqueue(event(tenant))

    assert orphans.claim(folder) == []
    assert await EventLog(database, signer, journal_dir=folder).replay_journals() == 0
    (segment,) = running.journal.path.glob("*.jsonl")
    assert len(segment.read_bytes().splitlines()) == 1
    assert await stored(database, tenant) == []

    # Once it is gone, its journal is claimed, by one process at a time.
    die(running)
    (claimed,) = orphans.claim(folder)
    assert orphans.claim(folder) == []
    claimed.release()


async def test_a_segment_is_deleted_once_everything_in_it_is_in_the_log(
    database: Database, signer: Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "SEGMENT_SECONDS", 0.0)
    tenant = uuid.uuid4()
    log = EventLog(database, signer, journal_dir=tmp_path / "journal")
    book = log.journal
    assert book is not None
    book.open()
    first = [event(tenant, data={"n": n}) for n in range(3)]
    for item in first:
        assert log.enqueue(item)
    await book.maintain()  # rotated: the first segment still holds three unwritten events
    assert len(list(book.path.glob("*.jsonl"))) == 2
    assert log.enqueue(event(tenant, data={"n": 3}))

    await log.flush()
    assert book.held == 0
    assert len(list(book.path.glob("*.jsonl"))) == 1  # the current one stays until it is rotated
    await book.maintain()
    (current,) = book.path.glob("*.jsonl")
    assert current.stat().st_size == 0

    assert log.enqueue(event(tenant, data={"n": 4}))
    await log.stop()
    assert owners(tmp_path / "journal") == []
    assert len(await stored(database, tenant)) == 5


# -- a journal that cannot be written: a small full tmpfs under the data folder ---------------------------


@pytest.fixture
def full_journal(settings: Settings) -> Iterator[Path]:
    """``<data>/journal`` on a 256 KiB tmpfs; ``fill()`` below takes its last byte."""
    folder = settings.data_dir / "journal"
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


async def test_a_journal_that_cannot_be_written_refuses_telemetry_and_records_lost_decisions(
    full_journal: Path, client: AsyncClient, app: FastAPI
) -> None:
    runtime: Runtime = app.state.runtime
    tenant_a = await signup(client, "Alpha")
    agent = await register(client, tenant_a, name="reporter")
    token = agent["identity_token"]
    tenant = uuid.UUID(tenant_a.id)
    report = {"events": [{"event_type": "tool.completed", "data": {"n": n}} for n in range(3)]}
    filler = fill(full_journal)

    refused = await client.post("/v1/telemetry", json=report, headers=bearer(token))
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "STORAGE_UNAVAILABLE"
    assert refused.headers["Retry-After"]
    ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert "journal" in ready.json()["detail"]
    # A decision already made must still be answered: its event is dropped, counted and recorded.
    assert not runtime.events.enqueue(decision(tenant, agent["agent_id"], PAST))  # type: ignore[arg-type]
    assert not runtime.events.enqueue(
        decision(tenant, agent["agent_id"], PAST),  # type: ignore[arg-type]
        aggregate_allowed=True,
    )

    os.unlink(filler)
    accepted = await client.post("/v1/telemetry", json=report, headers=bearer(token))
    assert accepted.status_code == 202, accepted.text
    assert (await client.get("/health/ready")).status_code == 200
    await runtime.events.flush(everything=True)
    rows = await stored(runtime.database, tenant)
    assert [json.loads(row.data) for row in rows if row.event_type == DROPPED_TYPE] == [
        {"count": 2, "reason": UNJOURNALED}
    ]
    assert len([row for row in rows if row.event_type == "tool.completed"]) == 3
    assert not [row for row in rows if row.event_type == "policy.checked"]


# -- an append whose outcome is unknown ----------------------------------------------------------------


async def test_appends_cut_off_at_any_moment_are_neither_lost_nor_written_twice(
    tmp_path: Path, pg_database: str, redis_prefix: str, pg_proxy: TcpProxy
) -> None:
    # Batches commit without waiting for the WAL flush and are confirmed once per flush: a connection cut
    # after some committed puts them back, and they must be found by id rather than appended again.
    settings = proxied_settings(tmp_path, pg_database, redis_prefix, pg_proxy)
    database = await open_database(settings)
    signer = checkpoint_signer(settings.pepper)
    tenant = uuid.uuid4()
    log = EventLog(database, signer, batch_size=50, journal_dir=tmp_path / "journal")
    assert log.journal is not None
    log.journal.open()
    for n in range(2_000):
        assert log.enqueue(event(tenant, data={"n": n}))
    chaos = random.Random(26)

    async def cut_now_and_then() -> None:
        for _ in range(25):
            await asyncio.sleep(chaos.uniform(0.005, 0.04))
            pg_proxy.sever()
            await asyncio.sleep(0.01)
            pg_proxy.restore()

    cutting = asyncio.create_task(cut_now_and_then())
    failures = 0
    try:
        while log.depth or not cutting.done():
            try:
                await log.flush(everything=True)
            except Exception:
                failures += 1
                await asyncio.sleep(0.01)
    finally:
        await cutting
        pg_proxy.restore()
    await log.flush(everything=True)

    assert failures > 0
    rows = await stored(database, tenant)
    assert sorted(json.loads(row.data)["n"] for row in rows) == list(range(2_000))
    assert log.journal.held == 0
    assert_valid_log(await export_lines(database, tenant, signer), signer, 2_000)
    log.journal.close(remove=True)
    await database.dispose()
