"""The batch writer under faults: a refused entry is set aside, an outage stalls visibly, shutdown spills.

Found by an outside run: on PostgreSQL one event carrying a NUL byte made the writer retry its batch every
second forever; the tenant's events (and then another tenant's) were never written, readiness said ready,
and shutdown lost the whole queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from aigos.core.signing import Signer
from aigos.server.app import create_app
from aigos.server.audit import spill
from aigos.server.audit.log import EventLog
from aigos.server.audit.records import REPLAYED_TYPE, SET_ASIDE_TYPE
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import APP_ROLE
from aigos.server.runtime import Runtime
from tests.audit.helpers import assert_valid_log, event, export_lines, proxied_settings, stored
from tests.tcp_proxy import TcpProxy

# What PostgreSQL cannot store (NUL) and what neither backend can (a lone surrogate: not UTF-8 at all).
REFUSED_EVERYWHERE = "\ud800"
REFUSED_BY_POSTGRES = "a\x00b"


async def test_a_refused_entry_is_set_aside_and_every_other_entry_appended(
    database: Database, signer: Signer, settings: Settings, tmp_path: Path
) -> None:
    log = EventLog(database, signer, batch_size=64, spill_dir=tmp_path / "spill")
    troubled, other = uuid.uuid4(), uuid.uuid4()
    bad = [event(troubled, data={"n": 10}, trace_id=REFUSED_EVERYWHERE)]
    if settings.database_kind == "postgresql":
        bad.append(event(troubled, data={"n": 20}, request_id=REFUSED_BY_POSTGRES))
    for n in range(40):
        log.enqueue(event(troubled, data={"n": n}))
        log.enqueue(event(other, data={"n": n}))
        if n == 10:
            log.enqueue(bad[0])
        if n == 20 and len(bad) > 1:
            log.enqueue(bad[1])

    await log.flush(everything=True)

    assert log.depth == 0
    assert log.tallies.set_aside == len(bad)
    rows = await stored(database, troubled)
    good = [row for row in rows if row.event_type == "test.happened"]
    assert [json.loads(row.data)["n"] for row in good] == list(range(40))
    records = [json.loads(row.data) for row in rows if row.event_type == SET_ASIDE_TYPE]
    assert [record["event_id"] for record in records] == [str(item.event_id) for item in bad]
    assert all(record["kept"] for record in records)
    assert len(await stored(database, other)) == 40
    assert_valid_log(await export_lines(database, troubled, signer), signer, len(rows))
    kept = (tmp_path / "spill" / spill.SET_ASIDE_NAME).read_text().splitlines()
    assert [json.loads(line)["event_id"] for line in kept] == [str(item.event_id) for item in bad]
    assert spill.from_record(json.loads(kept[0])).trace_id == REFUSED_EVERYWHERE


async def test_spilled_events_are_replayed_once_at_the_next_start(
    database: Database, signer: Signer, tmp_path: Path
) -> None:
    tenant = uuid.uuid4()
    folder = tmp_path / "spill"
    first = [event(tenant, data={"n": n}) for n in range(5)]
    log = EventLog(database, signer, spill_dir=folder)
    # A replay cut short: the first two already made it into the log before the process stopped.
    for item in first[:2]:
        await log.record(item)
    spill.spill(folder, first)

    assert await EventLog(database, signer, spill_dir=folder).replay_spilled() == 3
    assert await EventLog(database, signer, spill_dir=folder).replay_spilled() == 0

    rows = await stored(database, tenant)
    assert [row.event_type for row in rows] == ["test.happened"] * 5 + [REPLAYED_TYPE]
    assert sorted(row.event_id for row in rows[:5]) == sorted(item.event_id for item in first)
    assert json.loads(rows[-1].data)["already_present"] == 2
    assert list(folder.glob("spill-*")) == []
    assert_valid_log(await export_lines(database, tenant, signer), signer, 6)


def test_a_spill_file_being_replayed_by_a_live_process_is_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "spill"
    path = spill.spill(folder, [event(uuid.uuid4())])
    # This process (alive) claimed it; another process must not take it too.
    (taken,) = spill.claim(folder)
    assert taken.name == path.name + f".replaying-{os.getpid()}"
    assert spill.claim(folder) == []
    # A claim by a process that no longer runs is taken over.
    orphan = taken.with_name(path.name + ".replaying-999999999")
    taken.rename(orphan)
    assert len(spill.claim(folder)) == 1


# -- outages, through a TCP proxy in front of PostgreSQL ------------------------------------------------


async def test_an_outage_stalls_the_writer_visibly_and_it_resumes_without_loss(
    tmp_path: Path, pg_database: str, redis_prefix: str, pg_proxy: TcpProxy
) -> None:
    app = create_app(proxied_settings(tmp_path, pg_database, redis_prefix, pg_proxy))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as http,
    ):
        runtime: Runtime = app.state.runtime
        runtime.events.stall_seconds = 0.3
        tenant = uuid.uuid4()
        pg_proxy.sever()
        for n in range(50):
            runtime.events.enqueue(event(tenant, data={"n": n}))
        await _until(lambda: runtime.events.stalled)
        ready = await http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["eventlog"] == "stalled"
        assert "event log" in ready.json()["detail"]
        metrics = (await http.get("/metrics")).text
        assert "aigos_eventlog_stalled 1.0" in metrics
        assert runtime.events.depth == 50

        pg_proxy.restore()
        await _until(lambda: runtime.events.depth == 0 and not runtime.events.stalled)
        assert (await http.get("/health/ready")).status_code == 200
        assert "aigos_eventlog_stalled 0.0" in (await http.get("/metrics")).text
        rows = await stored(runtime.database, tenant)
        assert [json.loads(row.data)["n"] for row in rows] == list(range(50))


async def test_shutdown_without_a_database_spills_and_the_next_start_replays(
    tmp_path: Path, pg_database: str, redis_prefix: str, pg_proxy: TcpProxy
) -> None:
    settings = proxied_settings(tmp_path, pg_database, redis_prefix, pg_proxy)
    tenant = uuid.uuid4()
    app = create_app(settings)
    async with LifespanManager(app):
        runtime: Runtime = app.state.runtime
        runtime.events.shutdown_seconds = 0.5
        pg_proxy.sever()
        queued = [event(tenant, data={"n": n}) for n in range(300)]
        for item in queued:
            assert runtime.events.enqueue(item)
    assert runtime.events.tallies.spilled == 300
    (path,) = (settings.data_dir / "spill").glob("spill-*.jsonl")
    assert len(path.read_text().splitlines()) == 300

    pg_proxy.restore()
    again = create_app(settings)
    async with LifespanManager(again):
        database = again.state.runtime.database
        rows = await stored(database, tenant)
        assert [json.loads(row.data)["n"] for row in rows if row.event_type == "test.happened"] == list(
            range(300)
        )
        assert rows[-1].event_type == REPLAYED_TYPE
        assert again.state.runtime.events.tallies.replayed == 300
    assert list((settings.data_dir / "spill").glob("spill-*")) == []


async def test_a_full_queue_is_written_whole_at_shutdown(settings: Settings) -> None:
    # A flush in progress when the server stops must finish (a cancelled one used to lose its batch).
    app = create_app(settings.model_copy(update={"audit_batch_size": 100}))
    tenant = uuid.uuid4()
    async with LifespanManager(app):
        runtime: Runtime = app.state.runtime
        for n in range(2_000):
            runtime.events.enqueue(event(tenant, data={"n": n}))
        runtime.events._wake.set()
        await asyncio.sleep(0)
    database = Database(
        settings.resolved_database_url, role=APP_ROLE if settings.database_kind == "postgresql" else None
    )
    try:
        rows = await stored(database, tenant)
    finally:
        await database.dispose()
    assert sorted(json.loads(row.data)["n"] for row in rows) == list(range(2_000))


async def _until(condition: object, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)
