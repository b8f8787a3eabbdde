"""The event log's writer: record, enqueue, drops, aggregation, sealing, and concurrent appenders."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from aigos.core import auditlog, merkle
from aigos.core.signing import Signer
from aigos.server.audit import append_postgres, chain, checkpoints
from aigos.server.audit.events import NewEvent
from aigos.server.audit.log import EventLog, checkpoint_signer
from aigos.server.audit.models import AuditEvent, AuditHead
from aigos.server.audit.records import AGGREGATED_TYPE, DROPPED_TYPE
from aigos.server.audit.writer import BEHIND_PAUSE_EVERY
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import APP_ROLE
from aigos.server.in_flight import InFlight
from tests.audit.helpers import (
    assert_valid_log,
    event,
    export_lines,
    open_database,
    stored,
    stored_checkpoints,
    trusted,
)
from tests.conftest import ADMIN_TOKEN, SECRET_KEY, pg_url
from tests.helpers import bearer, signup_at
from tests.server_process import ServerProcess
from tests.tcp_proxy import TcpProxy

# -- record ------------------------------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_record_commits_and_rolls_back_with_the_callers_transaction(
    settings: Settings, database: Database, events: EventLog, signer: Signer
) -> None:
    tenant = uuid.uuid4()
    with pytest.raises(Boom):
        async with database.session() as session:
            entry = await events.record(event(tenant, "test.rolled_back"), session)
            assert entry["seq"] == 1
            raise Boom
    assert await stored(database, tenant) == []
    async with database.session(tenant) as session:
        assert await session.get(AuditHead, tenant) is None

    async with database.session() as session:
        entry = await events.record(event(tenant, "test.committed", data={"n": 1}), session)
    assert entry["seq"] == 1
    assert entry["prev_hash"] == auditlog.GENESIS_HASH
    assert entry["hash"] == auditlog.entry_hash(entry)
    await events.record(event(tenant, "test.own_transaction"))

    # Durable: a new connection pool sees both entries, exactly as returned.
    await database.dispose()
    fresh = await open_database(settings)
    try:
        rows = await stored(fresh, tenant)
        assert [(row.seq, row.event_type) for row in rows] == [
            (1, "test.committed"),
            (2, "test.own_transaction"),
        ]
        assert {**chain.entry_of(rows[0]), "hash": rows[0].hash} == entry
        assert_valid_log(await export_lines(fresh, tenant, signer), signer, 2)
    finally:
        await fresh.dispose()


async def test_mixed_record_and_enqueue_stay_gap_free_and_chained(
    database: Database, events: EventLog, signer: Signer
) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    for n in range(10):
        if n % 3 == 0:
            await events.record(event(tenant, data={"n": n}))
        else:
            assert events.enqueue(event(tenant, "test.queued", data={"n": n}))
        assert events.enqueue(event(other, "test.queued", data={"n": n}))
        if n == 5:
            await events.flush()
    assert events.depth > 0
    assert await events.flush() > 0
    assert events.depth == 0
    rows = await stored(database, tenant)
    assert [row.seq for row in rows] == list(range(1, 11))
    assert sorted(int(chain.entry_of(row)["data"]["n"]) for row in rows) == list(range(10))
    assert_valid_log(await export_lines(database, tenant, signer), signer, 10)
    other_rows = await stored(database, other)
    assert [int(chain.entry_of(row)["data"]["n"]) for row in other_rows] == list(range(10))
    assert_valid_log(await export_lines(database, other, signer), signer, 10)
    assert events.tallies.appended == 20


async def test_enqueue_then_flush_writes_in_order(database: Database, events: EventLog) -> None:
    tenant = uuid.uuid4()
    for n in range(5):
        assert events.enqueue(event(tenant, "policy.checked", outcome="denied", data={"n": n}))
    assert events.depth == 5
    assert await stored(database, tenant) == []
    assert await events.flush() == 5
    rows = await stored(database, tenant)
    assert [chain.entry_of(row)["data"] for row in rows] == [{"n": n} for n in range(5)]
    assert await events.flush() == 0


async def test_data_that_is_not_json_is_refused_at_the_door() -> None:
    # An event is made with its canonical text, so one that could never be written cannot be queued.
    tenant = uuid.uuid4()
    for data in ({"tags": {"a", "b"}}, {"ratio": float("nan")}):
        with pytest.raises(ValueError, match="not JSON"):
            event(tenant, data=data)
    assert event(tenant, data={"n": 1, "ok": True}).data_text == '{"n":1,"ok":true}'
    # A time without a zone could be stored as one instant and hashed as another.
    with pytest.raises(ValueError, match="time zone"):
        event(tenant, occurred_at=datetime(2026, 1, 1, 12, 0))


async def test_a_full_queue_drops_counts_and_records_the_loss(database: Database, signer: Signer) -> None:
    tenant = uuid.uuid4()
    events = EventLog(database, signer, queue_size=3)
    accepted = [events.enqueue(event(tenant, data={"n": n})) for n in range(5)]
    assert accepted == [True, True, True, False, False]
    assert events.tallies.dropped == 2
    await events.flush()
    rows = await stored(database, tenant)
    assert [row.event_type for row in rows] == ["test.happened"] * 3 + [DROPPED_TYPE]
    dropped = chain.entry_of(rows[-1])
    assert dropped["data"] == {"count": 2, "reason": "queue full"}
    assert dropped["outcome"] == "failure"
    # The count is recorded once: the next flush adds nothing.
    await events.flush()
    assert len(await stored(database, tenant)) == 4


async def test_allowed_decisions_are_aggregated_and_denials_kept_one_by_one(
    database: Database, events: EventLog
) -> None:
    tenant = uuid.uuid4()
    past = datetime(2020, 1, 1, 12, 30, 15, tzinfo=UTC)
    future = datetime(2999, 1, 1, 0, 0, tzinfo=UTC)

    def decision(outcome: str, agent: str, at: datetime) -> NewEvent:
        return event(tenant, "policy.checked", outcome=outcome, agent_id=agent, occurred_at=at)

    for agent in ["agent-a", "agent-a", "agent-b"]:
        assert events.enqueue(decision("allowed", agent, past), aggregate_allowed=True)
    for _ in range(2):
        assert events.enqueue(decision("denied", "agent-a", past), aggregate_allowed=True)
    # A minute that has not ended yet stays aggregated until a flush of everything.
    assert events.enqueue(decision("allowed", "agent-c", future), aggregate_allowed=True)
    # Without aggregation, an allowed decision is an entry of its own.
    assert events.enqueue(decision("allowed", "agent-d", past))
    assert events.depth == 3

    await events.flush()
    rows = [chain.entry_of(row) for row in await stored(database, tenant)]
    assert [(row["event_type"], row["outcome"]) for row in rows] == [
        ("policy.checked", "denied"),
        ("policy.checked", "denied"),
        ("policy.checked", "allowed"),
        (AGGREGATED_TYPE, "allowed"),
    ]
    assert rows[-1]["data"] == {
        "minute": "2020-01-01T12:30Z",
        "count": 3,
        "by_agent": {"agent-a": 2, "agent-b": 1},
    }

    await events.flush(everything=True)
    rows = [chain.entry_of(row) for row in await stored(database, tenant)]
    assert len(rows) == 5
    assert rows[-1]["event_type"] == AGGREGATED_TYPE
    assert rows[-1]["data"] == {"minute": "2999-01-01T00:00Z", "count": 1, "by_agent": {"agent-c": 1}}


async def test_stop_writes_everything_and_seals(database: Database, events: EventLog, signer: Signer) -> None:
    tenant = uuid.uuid4()
    events.start()
    for n in range(5):
        assert events.enqueue(event(tenant, data={"n": n}))
    await events.record(event(tenant, "test.recorded"))
    await events.stop()
    rows = await stored(database, tenant)
    assert [row.seq for row in rows] == [1, 2, 3, 4, 5, 6]
    sealed = await stored_checkpoints(database, tenant)
    assert sealed[-1].tree_size == 6
    assert sealed[-1].head_hash == rows[-1].hash
    assert_valid_log(await export_lines(database, tenant, signer), signer, 6)


async def test_seal_all_signs_checkpoints_over_the_merkle_root(
    database: Database, events: EventLog, signer: Signer
) -> None:
    tenants = {uuid.uuid4(): 3, uuid.uuid4(): 5}
    for tenant, count in tenants.items():
        for n in range(count):
            await events.record(event(tenant, data={"n": n}))
    assert await events.seal_all() == 2
    assert await events.seal_all() == 0

    async def check(tenant: uuid.UUID, size: int) -> None:
        rows = await stored(database, tenant)
        async with database.session(tenant) as session:
            latest = await checkpoints.latest(session, tenant)
        assert latest is not None
        published = checkpoints.to_json(latest)
        assert auditlog.verify_checkpoint(published, trusted(signer)) is None
        assert published["tree_size"] == size
        assert published["head_hash"] == rows[size - 1].hash
        leaves = [auditlog.entry_leaf(row.hash) for row in rows[:size]]
        assert published["root_hash"] == merkle.root_of(leaves).hex()
        # A different key is not accepted.
        other = Signer.from_seed(b"\x07" * 32)
        assert auditlog.verify_checkpoint(published, trusted(other)) is not None
        forged = {**published, "root_hash": "0" * 64}
        assert auditlog.verify_checkpoint(forged, trusted(signer)) == "checkpoint signature is invalid"

    for tenant, count in tenants.items():
        await check(tenant, count)

    first = next(iter(tenants))
    await events.record(event(first, "test.later"))
    assert await events.seal_all() == 1
    await check(first, 4)
    report = assert_valid_log(await export_lines(database, first, signer), signer, 4)
    assert report.checkpoints == 2
    assert report.sealed_through == 4


# -- concurrency -------------------------------------------------------------------------------------


async def test_concurrent_appends_to_one_tenant_are_gap_free(
    database: Database, events: EventLog, signer: Signer
) -> None:
    tenant = uuid.uuid4()
    count = 40

    async def one(n: int) -> None:
        if n % 2:
            await events.record(event(tenant, data={"n": n}))
        else:
            async with database.session() as session:
                await events.record(event(tenant, data={"n": n}), session)

    await asyncio.gather(*(one(n) for n in range(count)))
    rows = await stored(database, tenant)
    assert [row.seq for row in rows] == list(range(1, count + 1))
    assert sorted(int(chain.entry_of(row)["data"]["n"]) for row in rows) == list(range(count))
    await events.seal_all()
    assert_valid_log(await export_lines(database, tenant, signer), signer, count)


async def test_writers_that_remember_different_heads_rehash_onto_each_others(
    database: Database, signer: Signer
) -> None:
    # Two logs with their own memory of the heads, as two processes have: each one's memory goes stale
    # whenever the other appends, and the append must land on the head as it really is.
    first, second = EventLog(database, signer), EventLog(database, signer)
    tenant = uuid.uuid4()
    count = 30

    async def one(n: int) -> None:
        log = first if n % 2 else second
        if n % 3 == 0:
            async with database.session() as session:
                await log.record(event(tenant, data={"n": n}), session)
        elif n % 3 == 1:
            await log.record(event(tenant, data={"n": n}))
        else:
            assert log.enqueue(event(tenant, data={"n": n}))
            await log.flush()

    for start in range(0, count, 6):
        await asyncio.gather(*(one(n) for n in range(start, start + 6)))
    rows = await stored(database, tenant)
    assert [row.seq for row in rows] == list(range(1, count + 1))
    assert sorted(int(chain.entry_of(row)["data"]["n"]) for row in rows) == list(range(count))
    await first.seal_all()
    assert_valid_log(await export_lines(database, tenant, signer), signer, count)


async def test_a_writer_that_keeps_losing_the_race_locks_the_head(
    database: Database, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No optimistic attempt at all: every append takes the path a writer ends on under heavy contention.
    monkeypatch.setattr(append_postgres, "OPTIMISTIC_ATTEMPTS", 0)
    log, other = EventLog(database, signer), EventLog(database, signer)
    tenant = uuid.uuid4()
    await other.record(event(tenant, data={"n": 0}))
    await log.record(event(tenant, data={"n": 1}))
    async with database.session() as session:
        await log.record(event(tenant, data={"n": 2}), session)
        await log.record(event(tenant, data={"n": 3}), session)
    assert log.enqueue(event(tenant, data={"n": 4}))
    await log.flush()
    await asyncio.gather(*(other.record(event(tenant, data={"n": n})) for n in range(5, 10)))
    rows = await stored(database, tenant)
    assert [row.seq for row in rows] == list(range(1, 11))
    assert [chain.entry_of(row)["data"]["n"] for row in rows[:5]] == list(range(5))
    assert sorted(int(chain.entry_of(row)["data"]["n"]) for row in rows[5:]) == list(range(5, 10))
    await log.seal_all()
    assert_valid_log(await export_lines(database, tenant, signer), signer, 10)


async def test_the_batch_writer_waits_for_quiet_moments_but_never_stalls(
    database: Database, signer: Signer
) -> None:
    # A request that never ends: the writer waits a little before each piece, then writes anyway.
    in_flight = InFlight()
    in_flight.enter()
    log = EventLog(database, signer, in_flight=in_flight)
    tenant = uuid.uuid4()
    for n in range(20):
        assert log.enqueue(event(tenant, "policy.checked", outcome="denied", data={"n": n}))
    assert await asyncio.wait_for(log.flush(), 10) == 20
    rows = await stored(database, tenant)
    assert [chain.entry_of(row)["data"]["n"] for row in rows] == list(range(20))
    in_flight.leave()


async def test_a_writer_falling_behind_hashes_in_longer_pieces(database: Database, signer: Signer) -> None:
    # Requests always ready: each turn of the loop serves one (a millisecond of work) and gives the writer
    # one piece. Pieces of a few entries would take a turn per four events, fewer than the checks that
    # queue them; once the queue holds a batch, the writer takes longer ones.
    log = EventLog(database, signer, in_flight=InFlight(), batch_size=100)
    tenant = uuid.uuid4()
    batch = [event(tenant, "policy.checked", outcome="denied", data={"n": n}) for n in range(1_000)]
    turns = 0
    done = asyncio.Event()

    async def requests() -> None:
        nonlocal turns
        while not done.is_set():
            time.sleep(0.001)  # noqa: ASYNC251 - a request's CPU work, holding the loop as one does
            turns += 1
            await asyncio.sleep(0)

    async def hashed_turns() -> int:
        nonlocal turns
        turns = 0
        await chain.chain(tenant, chain.GENESIS, batch, pause=log.writer.pause, entries=False)
        return turns

    serving = asyncio.create_task(requests())
    try:
        keeping_up = await hashed_turns()
        for item in batch:
            assert log.enqueue(item)
        behind = await hashed_turns()
    finally:
        done.set()
        await serving
    pieces = len(batch) // chain.YIELD_EVERY
    assert keeping_up >= pieces - 1
    assert behind <= pieces // BEHIND_PAUSE_EVERY + 1


async def test_a_batch_being_hashed_does_not_hold_back_other_writes(
    database: Database, signer: Signer
) -> None:
    # The batch is hashed and converted before its transaction begins (on SQLite, before it takes the
    # database's one write lock): a durable write meanwhile goes through at once, not after the batch.
    in_flight = InFlight()
    in_flight.enter()  # a request that never ends: every piece of the batch waits a little first
    log = EventLog(database, signer, in_flight=in_flight)
    busy, other = uuid.uuid4(), uuid.uuid4()
    await log.record(event(busy, data={"n": -1}))  # the head is known: the batch is hashed before locking
    for n in range(200):
        assert log.enqueue(event(busy, "policy.checked", outcome="denied", data={"n": n}))
    flushing = asyncio.create_task(log.flush())
    await asyncio.sleep(0.01)
    await log.record(event(other, data={"n": 0}))
    assert not flushing.done()
    in_flight.leave()
    assert await flushing == 200
    assert [row.seq for row in await stored(database, busy)] == list(range(1, 202))
    assert [row.seq for row in await stored(database, other)] == [1]


async def test_a_connection_the_database_dropped_fails_one_append_and_is_not_reused(pg_database: str) -> None:
    # Connections given back a moment ago are handed out unprobed; one the server has since closed must
    # fail only the append that met it, not every later one.
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    database = Database(
        pg_url(pg_database).replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), role=APP_ROLE
    )
    try:
        log = EventLog(database, checkpoint_signer(SECRET_KEY.encode()))
        tenant = uuid.uuid4()
        await log.record(event(tenant, data={"n": 1}))
        proxy.disconnect_all()
        with pytest.raises(Exception):
            await log.record(event(tenant, data={"n": 2}))
        await log.record(event(tenant, data={"n": 3}))
        rows = await stored(database, tenant)
        assert [chain.entry_of(row)["data"]["n"] for row in rows] == [1, 3]
        assert [row.seq for row in rows] == [1, 2]
    finally:
        await database.dispose()
        await proxy.stop()


@pytest.mark.slow
def test_two_server_processes_append_to_one_tenant(tmp_path: Path, replica_env: dict[str, str]) -> None:
    env = replica_env
    per_process = 20
    with ServerProcess(tmp_path / "one", env) as one, ServerProcess(tmp_path / "two", env) as two:
        # The free plan's five keys would not do; the platform admin may sign up on another plan.
        signed_up = signup_at(one.base_url, "Both", plan_tier="enterprise", headers=bearer(ADMIN_TOKEN))
        tenant, owner = uuid.UUID(signed_up.id), signed_up.headers

        def create_key(server: ServerProcess, n: int) -> int:
            response = httpx.post(
                server.base_url + "/v1/api-keys",
                json={"name": f"key-{n}", "scopes": ["tenant:read"]},
                headers=owner,
                timeout=30.0,
            )
            return response.status_code

        with ThreadPoolExecutor(max_workers=10) as pool:
            futures = [
                pool.submit(create_key, server, n) for n in range(per_process) for server in (one, two)
            ]
            statuses = [future.result() for future in futures]
        assert statuses == [201] * (2 * per_process), (one.output(), two.output())
    # Both processes have stopped, and sealed their heads on the way out.

    signer = checkpoint_signer(SECRET_KEY.encode())

    async def read() -> tuple[list[AuditEvent], list[str]]:
        database = Database(replica_env["AIGOS_DATABASE_URL"], role=APP_ROLE)
        try:
            return await stored(database, tenant), await export_lines(database, tenant, signer)
        finally:
            await database.dispose()

    rows, lines = asyncio.run(read())
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    assert [row.event_type for row in rows].count("api_key.created") == 2 * per_process
    report = assert_valid_log(lines, signer, len(rows))
    assert report.sealed_through == len(rows)


async def test_the_durable_confirmation_flushes_what_was_appended_before_it(pg_database: str) -> None:
    # Batches commit without waiting for the WAL; the journal lets them go only after flush_wal, so it
    # must flush the WAL at least up to them. (A transaction that only takes an id commits asynchronously.)
    database = Database(pg_url(pg_database), role=APP_ROLE)
    try:
        log = EventLog(database, checkpoint_signer(SECRET_KEY.encode()))
        for attempt in range(20):
            log.enqueue(event(uuid.uuid4(), data={"n": attempt}))
            assert await log.flush() == 1
            async with database.driver() as driver:
                appended = await driver.fetchval("SELECT pg_current_wal_insert_lsn()")
            await log.writer.appender.flush_wal()
            async with database.driver() as driver:
                flushed = await driver.fetchval("SELECT pg_current_wal_flush_lsn()")
            assert flushed >= appended, attempt
    finally:
        await database.dispose()
