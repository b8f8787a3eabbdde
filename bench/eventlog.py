"""Event log throughput: appends on PostgreSQL and SQLite, raw-insert peers, and export verification.

Every figure comes from the same run, on 127.0.0.1 only:

1. Buffered appends on PostgreSQL (``EventLog.enqueue`` then ``flush(everything=True)``), with one and
   with two writer processes (``multiprocessing``, spawn). Each writer has its own ``EventLog`` and
   ``Database(url, role="aigos_app")``, pre-builds its events (policy decisions, ``data`` =
   ``{tool, domain, allowed, reason}``) spread round-robin over the same tenants, so both processes
   contend on the same tenant heads; the clock runs from the first ``enqueue`` to the last commit.
   Afterwards each tenant's sequence is checked in the database: ``count == max(seq)``, starting at 1,
   head at ``max(seq)``, every ``prev_hash`` equal to the previous entry's ``hash``.
2. The raw-insert peers, same process layout, same rows (already serialised, no hashing, no head lock,
   no row-level security) into an unpartitioned, untriggered copy of ``audit_events`` (same columns and
   indexes), as the superuser, ``batch_size`` rows per transaction: asyncpg ``COPY``
   (``copy_records_to_table``) and asyncpg ``executemany`` of one ``INSERT``. The ratio of the buffered
   figure to these is the cost of chaining, locking and the ORM.
3. Durable one-by-one appends on PostgreSQL: ``EventLog.record(event)`` in a loop, one transaction each.
4. The same buffered and durable runs on embedded SQLite, one writer process only (SQLite allows one
   writer at a time; a second process would only queue on its lock).
5. ``verify_export`` over a synthetic valid export of one tenant written to a temporary file (streaming,
   by ``bench/verify.py``'s writer): header, 1,000,000 event lines, a signed checkpoint every 100,000
   entries; then read back line by line as ``aigos audit verify`` reads it. Writing is timed separately;
   resident memory is read in the (separate) verifying process. ``bench/verify.py`` times the command
   itself at several sizes.

The audit tables have no foreign key to ``tenants``, so the tenants are plain random UUIDs. A fresh
PostgreSQL database ``aigos_bench_<random>`` is created, migrated and dropped ``WITH (FORCE)`` at the
end; SQLite lives in a temporary directory.

Run: ``.venv/bin/python bench/eventlog.py [--events N] [--durable-events N] [--verify-events N]
[--batch-size N] [--tenants N] [--profile] [--json]``.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``http``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0], where ``bench/http.py`` would shadow the standard
# library's ``http`` package. Import the bench package from the repository root instead (spawned worker
# processes inherit this sys.path).
_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import multiprocessing
import os
import platform
import pstats
import secrets
import signal
import sqlite3
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnContext
from multiprocessing.synchronize import Barrier
from types import FrameType
from typing import Any

import psutil

from bench._server import PG_ADMIN_DSN, _pg_admin
from bench.verify import decision_data, write_export

MB = 1024 * 1024
DEFAULT_EVENTS = 100_000  # per writer process
DEFAULT_DURABLE_EVENTS = 3_000
DEFAULT_VERIFY_EVENTS = 1_000_000
DEFAULT_BATCH_SIZE = 1_000  # EventLog's default
DEFAULT_TENANTS = 10
CHECKPOINT_EVERY = 100_000
WRITERS = (1, 2)
BUFFERED_TARGET_PER_SECOND = 20_000.0
DURABLE_TARGET_PER_SECOND = 1_000.0
VERIFY_TARGET_SECONDS = 10.0
WORKER_TIMEOUT_SECONDS = 900.0
RAW_TABLE = "bench_raw_events"


# -- events ------------------------------------------------------------------------------------------


def build_events(tenants: list[uuid.UUID], count: int, writer: int) -> list[Any]:
    """``count`` policy-decision ``NewEvent``s, round-robin over ``tenants`` (built before any timing)."""
    from aigos.server.audit.events import NewEvent

    events = []
    for i in range(count):
        data = decision_data(i)
        agent = f"agent-{i % 50}"
        events.append(
            NewEvent(
                tenant_id=tenants[i % len(tenants)],
                event_type="policy.decision",
                actor_type="agent",
                actor_id=agent,
                data=data,
                agent_id=agent,
                outcome="allowed" if data["allowed"] else "denied",
                request_id=f"{writer:02x}{i:030x}",
            )
        )
    return events


# -- PostgreSQL database and CPU sampling -------------------------------------------------------------


@contextlib.contextmanager
def fresh_database() -> Iterator[tuple[str, str]]:
    """A new ``aigos_bench_<random>`` database, migrated; yields (SQLAlchemy URL, asyncpg DSN).

    Dropped ``WITH (FORCE)`` on exit, whatever happened.
    """
    from aigos.server.db.migrate import upgrade

    name = f"aigos_bench_{secrets.token_hex(6)}"
    dsn = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(upgrade(url))  # as the superuser of the URL, like the server's own migration step
        yield url, dsn
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg_fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def postgres_info() -> dict[str, str]:
    """Server version and the durability settings that decide commit cost."""
    rows = asyncio.run(
        _pg_fetch(
            PG_ADMIN_DSN,
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            ["server_version", "fsync", "synchronous_commit", "shared_buffers", "wal_level"],
        )
    )
    return {row["name"]: row["setting"] for row in rows}


def _postgres_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of every running ``postgres`` process, by pid."""
    found: dict[int, float] = {}
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "postgres":
            continue
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            found[process.pid] = times.user + times.system
    return found


def _machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine spent busy (user, nice, system, irq) since boot."""
    times = psutil.cpu_times()
    return float(
        times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    )


@dataclass(frozen=True)
class CpuShares:
    """CPU time over wall time (1.0 = one core busy) of PostgreSQL and of the whole machine."""

    postgres: float
    machine: float


class CpuSampler:
    """Samples the CPU time of every ``postgres`` process, and of the machine, on a background thread.

    ``shares(start, end)`` is the CPU time used between two ``time.monotonic()`` instants (bracketed by
    the nearest samples) over their distance. A backend that exits in between counts up to its last
    sample, one that starts counts from zero.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float, dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        self.samples.append((time.monotonic(), _machine_busy_seconds(), _postgres_cpu_seconds()))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                self._sample()
                return

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def shares(self, start: float, end: float) -> CpuShares | None:
        """CPU shares over ``[start, end]``, or None without samples around it."""
        samples = list(self.samples)
        first = max((i for i, sample in enumerate(samples) if sample[0] <= start), default=None)
        last = min((i for i, sample in enumerate(samples) if sample[0] >= end), default=None)
        if first is None or last is None or samples[last][0] <= samples[first][0]:
            return None
        initial = samples[first][2]
        latest: dict[int, float] = {}
        for *_times, cpu in samples[first : last + 1]:
            latest.update(cpu)
        postgres = sum(value - initial.get(pid, 0.0) for pid, value in latest.items())
        wall = samples[last][0] - samples[first][0]
        return CpuShares(postgres=postgres / wall, machine=(samples[last][1] - samples[first][1]) / wall)


# -- writer processes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterJob:
    """What one writer process does. ``kind``: ``eventlog``, ``copy`` or ``insert``."""

    kind: str
    url: str
    tenants: tuple[str, ...]
    events: int
    batch_size: int
    writer: int
    signer_seed: bytes = b"\x00" * 32
    profile: bool = False


@dataclass
class WriterResult:
    """One writer's timings (``time.monotonic()``, comparable across processes on Linux) and counts."""

    writer: int
    events: int
    start: float
    enqueued: float
    end: float
    cpu_seconds: float
    appended: int
    dropped: int
    profile: str = ""

    @property
    def seconds(self) -> float:
        """From the first enqueue (or insert) to the last commit."""
        return self.end - self.start


async def _eventlog_writer(job: WriterJob, barrier: Barrier) -> WriterResult:
    from aigos.core.signing import Signer
    from aigos.server.audit.log import EventLog
    from aigos.server.db.database import APP_ROLE, Database

    tenants = [uuid.UUID(t) for t in job.tenants]
    database = Database(job.url, role=APP_ROLE, pool_size=2, max_overflow=0)
    try:
        log = EventLog(
            database,
            Signer.from_seed(job.signer_seed),
            queue_size=job.events + len(tenants) + 1,
            batch_size=job.batch_size,
        )
        # Warm-up (untimed): connect, compile the statements, create the heads. One event per tenant.
        for event in build_events(tenants, len(tenants), job.writer + 100):
            log.enqueue(event)
        await log.flush(everything=True)
        events = build_events(tenants, job.events, job.writer)
        gc.collect()
        profiler = cProfile.Profile() if job.profile else None
        barrier.wait(timeout=120)
        cpu0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        start = time.monotonic()
        for event in events:
            log.enqueue(event)
        enqueued = time.monotonic()
        await log.flush(everything=True)
        end = time.monotonic()
        if profiler is not None:
            profiler.disable()
        cpu = time.process_time() - cpu0
        return WriterResult(
            writer=job.writer,
            events=job.events,
            start=start,
            enqueued=enqueued,
            end=end,
            cpu_seconds=cpu,
            appended=log.tallies.appended - len(tenants),
            dropped=log.tallies.dropped,
            profile=_profile_text(profiler) if profiler is not None else "",
        )
    finally:
        await database.dispose()


def _raw_rows(job: WriterJob) -> list[tuple[Any, ...]]:
    """The rows ``append`` would store for this writer's events, with placeholder hashes (no hashing)."""
    from aigos.core.canonical import canonical

    tenants = [uuid.UUID(t) for t in job.tenants]
    now = datetime.now(UTC)
    placeholder = "0" * 64
    rows: list[tuple[Any, ...]] = []
    for event in build_events(tenants, job.events, job.writer):
        # Each writer its own seq range: the primary key is (tenant_id, seq, recorded_at).
        seq = job.writer * 1_000_000_000 + len(rows) + 1
        rows.append(
            (
                event.tenant_id,
                seq,
                now,
                event.event_id,
                event.event_type,
                event.agent_id,
                now,
                event.actor_type,
                event.actor_id,
                event.source,
                event.outcome,
                event.request_id,
                event.trace_id,
                event.span_id,
                canonical(dict(event.data)).decode(),
                placeholder,
                placeholder,
            )
        )
    return rows


async def _raw_writer(job: WriterJob, barrier: Barrier) -> WriterResult:
    import asyncpg

    from aigos.server.audit.models import AuditEvent

    # The raw table is made LIKE audit_events, and _raw_rows follows its column order.
    columns = list(AuditEvent.__table__.columns.keys())
    conn = await asyncpg.connect(job.url)
    try:
        rows = _raw_rows(job)
        placeholders = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        insert = f"INSERT INTO {RAW_TABLE} ({', '.join(columns)}) VALUES ({placeholders})"
        await conn.execute(f"SELECT 1 FROM {RAW_TABLE} LIMIT 1")
        gc.collect()
        barrier.wait(timeout=120)
        cpu0 = time.process_time()
        start = time.monotonic()
        for offset in range(0, len(rows), job.batch_size):
            batch = rows[offset : offset + job.batch_size]
            async with conn.transaction():
                if job.kind == "copy":
                    await conn.copy_records_to_table(RAW_TABLE, records=batch, columns=columns)
                else:
                    await conn.executemany(insert, batch)
        end = time.monotonic()
        return WriterResult(
            writer=job.writer,
            events=job.events,
            start=start,
            enqueued=start,
            end=end,
            cpu_seconds=time.process_time() - cpu0,
            appended=len(rows),
            dropped=0,
        )
    finally:
        await conn.close()


def _profile_text(profiler: cProfile.Profile, limit: int = 18) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def writer_main(job: WriterJob, barrier: Barrier, results: Any) -> None:
    """Entry point of a writer process: run the job, put a ``WriterResult`` (or the error) on ``results``."""
    try:
        runner = _eventlog_writer if job.kind == "eventlog" else _raw_writer
        results.put(asyncio.run(runner(job, barrier)))
    except BaseException:
        barrier.abort()  # release the other writers instead of leaving them waiting
        results.put(f"writer {job.writer} ({job.kind}) failed:\n{traceback.format_exc()}")


def run_writers(
    ctx: SpawnContext, jobs: list[WriterJob], cpu: CpuSampler
) -> tuple[list[WriterResult], CpuShares | None]:
    """Run one process per job, started together behind a barrier; results and the CPU shares."""
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    processes = [ctx.Process(target=writer_main, args=(job, barrier, results), daemon=True) for job in jobs]
    for process in processes:
        process.start()
    collected: list[WriterResult] = []
    errors: list[str] = []
    try:
        for _ in jobs:
            item = results.get(timeout=WORKER_TIMEOUT_SECONDS)
            if isinstance(item, WriterResult):
                collected.append(item)
            else:
                errors.append(str(item))
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
    if errors:
        raise RuntimeError("\n".join(errors))
    collected.sort(key=lambda r: r.writer)
    start, end = min(r.start for r in collected), max(r.end for r in collected)
    return collected, cpu.shares(start, end)


def summarise(
    name: str,
    results: list[WriterResult],
    shares: CpuShares | None,
    target: float | None,
    *,
    postgres: bool = True,
) -> dict[str, Any]:
    """Totals of one multi-writer run: events/s over the union of the writers' intervals, and each's."""
    start, end = min(r.start for r in results), max(r.end for r in results)
    wall = end - start
    events = sum(r.events for r in results)
    rate = events / wall
    writers_cpu = sum(r.cpu_seconds for r in results) / wall
    summary: dict[str, Any] = {
        "name": name,
        "writers": len(results),
        "events": events,
        "seconds": round(wall, 3),
        "events_per_second": round(rate, 1),
        "per_writer": [
            {
                "writer": r.writer,
                "events": r.events,
                "seconds": round(r.seconds, 3),
                "events_per_second": round(r.events / r.seconds, 1),
                "enqueue_seconds": round(r.enqueued - r.start, 4),
                "cpu_share": round(r.cpu_seconds / r.seconds, 3),
                "appended": r.appended,
                "dropped": r.dropped,
            }
            for r in results
        ],
        "writers_cpu_share": round(writers_cpu, 3),
        "postgres_cpu_share": round(shares.postgres, 3) if shares is not None and postgres else None,
        # Everything else busy on the machine meanwhile (other programs, the kernel, the sampler itself).
        "other_cpu_share": round(
            max(0.0, shares.machine - writers_cpu - (shares.postgres if postgres else 0.0)), 3
        )
        if shares is not None
        else None,
    }
    if target is not None:
        summary["target_events_per_second"] = target
        summary["target_met"] = rate >= target
    return summary


# -- checks -----------------------------------------------------------------------------------------------

PG_CHECK = """
WITH chain AS (
  SELECT tenant_id, seq, prev_hash, lag(hash) OVER (PARTITION BY tenant_id ORDER BY seq) AS previous
  FROM audit_events WHERE tenant_id = ANY($1::uuid[])
)
SELECT c.tenant_id, count(*) AS n, min(c.seq) AS lo, max(c.seq) AS hi, count(DISTINCT c.seq) AS distinct_seq,
       count(*) FILTER (WHERE c.seq > 1 AND c.prev_hash <> c.previous) AS broken,
       max(h.seq) AS head
FROM chain c LEFT JOIN audit_heads h ON h.tenant_id = c.tenant_id
GROUP BY c.tenant_id
"""


def check_postgres(dsn: str, tenants: list[uuid.UUID], expected: int) -> dict[str, Any]:
    """Per tenant: gap-free ``seq`` from 1 (count == max == distinct), head at max, chain linked."""
    rows = asyncio.run(_pg_fetch(dsn, PG_CHECK, tenants))
    return _check(
        [(r["n"], r["lo"], r["hi"], r["distinct_seq"], r["broken"], r["head"]) for r in rows],
        len(tenants),
        expected,
    )


def check_sqlite(path: Path, tenants: list[uuid.UUID], expected: int) -> dict[str, Any]:
    """The same checks as ``check_postgres`` on the SQLite file."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = []
        for tenant in tenants:
            found = conn.execute(
                "SELECT count(*), min(seq), max(seq), count(DISTINCT seq) FROM audit_events "
                "WHERE tenant_id = ?",
                (tenant.hex,),
            ).fetchone()
            broken = conn.execute(
                "SELECT count(*) FROM audit_events a JOIN audit_events b "
                "ON b.tenant_id = a.tenant_id AND b.seq = a.seq - 1 "
                "WHERE a.tenant_id = ? AND a.prev_hash <> b.hash",
                (tenant.hex,),
            ).fetchone()[0]
            head = conn.execute("SELECT seq FROM audit_heads WHERE tenant_id = ?", (tenant.hex,)).fetchone()
            if found[0]:
                rows.append((*found, broken, head[0] if head else None))
    return _check(rows, len(tenants), expected)


def _check(rows: list[tuple[Any, ...]], tenants: int, expected: int) -> dict[str, Any]:
    gap_free = all(n == hi == distinct and lo == 1 for n, lo, hi, distinct, _broken, _head in rows)
    linked = all(broken == 0 for *_rest, broken, _head in rows)
    heads = all(head == hi for _n, _lo, hi, _distinct, _broken, head in rows)
    total = sum(row[0] for row in rows)
    return {
        "tenants": len(rows),
        "tenants_expected": tenants,
        "rows": total,
        "rows_expected": expected,
        "gap_free": gap_free and len(rows) == tenants,
        "chain_linked": linked,
        "heads_at_max_seq": heads,
        "ok": gap_free and linked and heads and len(rows) == tenants and total == expected,
    }


# -- durable appends ------------------------------------------------------------------------------------


async def _durable(url: str, tenants: list[uuid.UUID], count: int) -> tuple[float, list[int]]:
    from aigos.core.signing import Signer
    from aigos.server.audit.log import EventLog
    from aigos.server.db.database import APP_ROLE, Database

    database = Database(url, role=APP_ROLE, pool_size=2, max_overflow=0)
    try:
        log = EventLog(database, Signer.from_seed(secrets.token_bytes(32)))
        for event in build_events(tenants, len(tenants), 99):  # warm-up, untimed
            await log.record(event)
        events = build_events(tenants, count, 98)
        latencies: list[int] = []
        start = time.perf_counter()
        for event in events:
            began = time.perf_counter_ns()
            await log.record(event)
            latencies.append(time.perf_counter_ns() - began)
        return time.perf_counter() - start, latencies
    finally:
        await database.dispose()


def run_durable(name: str, url: str, tenants: list[uuid.UUID], count: int) -> dict[str, Any]:
    """``record(event)`` one by one, each its own transaction: events/s and latency percentiles."""
    seconds, latencies = asyncio.run(_durable(url, tenants, count))
    latencies.sort()
    rate = count / seconds
    return {
        "name": name,
        "events": count,
        "seconds": round(seconds, 3),
        "events_per_second": round(rate, 1),
        "p50_ms": round(_percentile(latencies, 0.50) / 1e6, 3),
        "p99_ms": round(_percentile(latencies, 0.99) / 1e6, 3),
        "max_ms": round(latencies[-1] / 1e6, 3),
        "target_events_per_second": DURABLE_TARGET_PER_SECOND,
        "target_met": rate >= DURABLE_TARGET_PER_SECOND,
    }


def _percentile(sorted_values: list[int], fraction: float) -> int:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


# -- verification ---------------------------------------------------------------------------------------


def verify_main(events: int, checkpoint_every: int, profile: bool, results: Any) -> None:
    """Entry point of the verifying process: write the export to a file, then time ``verify_export``
    reading it line by line, as ``aigos audit verify`` does."""
    try:
        from aigos.cli.audit import read_lines
        from aigos.core.auditlog import MAX_LINE_BYTES, verify_export

        process = psutil.Process()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "export.ndjson"
            started = time.perf_counter()
            with path.open("wb", buffering=1 << 20) as out:
                checkpoints = write_export(out, events, checkpoint_every)
            build_seconds = time.perf_counter() - started
            export_bytes = path.stat().st_size
            gc.collect()
            rss_start = process.memory_info().rss
            peak = rss_start
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not stop.wait(0.05):
                    peak = max(peak, process.memory_info().rss)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            profiler = cProfile.Profile() if profile else None
            if profiler is not None:
                profiler.enable()
            started = time.perf_counter()
            with path.open("rb") as stream:
                report = verify_export(read_lines(stream, MAX_LINE_BYTES))
            verify_seconds = time.perf_counter() - started
            if profiler is not None:
                profiler.disable()
            stop.set()
            sampler.join(timeout=5)
            peak = max(peak, process.memory_info().rss)
        results.put(
            {
                "events": events,
                "checkpoints": checkpoints,
                "export_mb": round(export_bytes / MB, 1),
                "build_seconds": round(build_seconds, 3),
                "verify_seconds": round(verify_seconds, 3),
                "verify_events_per_second": round(events / verify_seconds, 1),
                "ok": report.ok,
                "entries_verified": report.entries,
                "checkpoints_verified": report.checkpoints,
                "failure": str(report.failure) if report.failure else None,
                "rss_start_mb": round(rss_start / MB, 1),
                "rss_peak_during_verify_mb": round(peak / MB, 1),
                "verify_added_mb": round((peak - rss_start) / MB, 1),
                "target_seconds": VERIFY_TARGET_SECONDS * events / DEFAULT_VERIFY_EVENTS,
                "target_met": verify_seconds < VERIFY_TARGET_SECONDS * events / DEFAULT_VERIFY_EVENTS,
                "profile": _profile_text(profiler) if profiler is not None else "",
            }
        )
    except BaseException:
        results.put(f"verification failed:\n{traceback.format_exc()}")


def run_verify(ctx: SpawnContext, events: int, profile: bool) -> dict[str, Any]:
    """Write and verify the synthetic export in a fresh process (so its RSS is verification's alone)."""
    results = ctx.Queue()
    process = ctx.Process(target=verify_main, args=(events, CHECKPOINT_EVERY, profile, results), daemon=True)
    process.start()
    try:
        item = results.get(timeout=WORKER_TIMEOUT_SECONDS)
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
    if not isinstance(item, dict):
        raise RuntimeError(str(item))
    return item


# -- the whole run ----------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Command-line settings."""

    events: int = DEFAULT_EVENTS
    durable_events: int = DEFAULT_DURABLE_EVENTS
    verify_events: int = DEFAULT_VERIFY_EVENTS
    batch_size: int = DEFAULT_BATCH_SIZE
    tenants: int = DEFAULT_TENANTS
    profile: bool = False
    json: bool = False
    profiles: dict[str, str] = field(default_factory=dict)


def _new_tenants(count: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(count)]


def _jobs(kind: str, url: str, tenants: list[uuid.UUID], writers: int, settings: Settings) -> list[WriterJob]:
    seed = secrets.token_bytes(32)  # the same checkpoint key in every writer, as on replicas
    return [
        WriterJob(
            kind=kind,
            url=url,
            tenants=tuple(str(t) for t in tenants),
            events=settings.events,
            batch_size=settings.batch_size,
            writer=writer,
            signer_seed=seed,
            profile=settings.profile and kind == "eventlog" and writers == 1,
        )
        for writer in range(writers)
    ]


def run_postgres(ctx: SpawnContext, settings: Settings) -> dict[str, Any]:
    """Buffered (1 and 2 writers), raw peers, and durable, all on one fresh PostgreSQL database."""
    out: dict[str, Any] = {"buffered": [], "raw": [], "checks": {}}
    with fresh_database() as (url, dsn), CpuSampler() as cpu:
        asyncio.run(
            _pg_fetch(
                dsn,
                f"CREATE TABLE {RAW_TABLE} (LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                "INCLUDING INDEXES)",
            )
        )
        for writers in WRITERS:
            tenants = _new_tenants(settings.tenants)
            results, share = run_writers(ctx, _jobs("eventlog", url, tenants, writers, settings), cpu)
            name = f"postgres buffered {writers}w"
            out["buffered"].append(summarise(name, results, share, BUFFERED_TARGET_PER_SECOND))
            expected = writers * (settings.events + settings.tenants)  # plus one warm-up event per tenant
            out["checks"][name] = check_postgres(dsn, tenants, expected)
            for result in results:
                if result.profile:
                    settings.profiles[name] = result.profile
        writers = max(WRITERS)
        for kind in ("copy", "insert"):
            tenants = _new_tenants(settings.tenants)
            results, share = run_writers(ctx, _jobs(kind, dsn, tenants, writers, settings), cpu)
            label = "COPY" if kind == "copy" else "executemany"
            out["raw"].append(summarise(f"postgres raw {label} {writers}w", results, share, None))
        out["durable"] = run_durable(
            "postgres record()", url, _new_tenants(settings.tenants), settings.durable_events
        )
    return out


def run_sqlite(ctx: SpawnContext, settings: Settings) -> dict[str, Any]:
    """Buffered (one writer: SQLite has a single writer) and durable on a fresh SQLite file."""
    from aigos.server.db.migrate import upgrade

    out: dict[str, Any] = {"checks": {}}
    with tempfile.TemporaryDirectory(prefix="aigos-bench-eventlog-") as tmp:
        path = Path(tmp) / "aigos.db"
        url = f"sqlite+aiosqlite:///{path.as_posix()}"
        asyncio.run(upgrade(url))
        tenants = _new_tenants(settings.tenants)
        with CpuSampler() as cpu:
            results, shares = run_writers(ctx, _jobs("eventlog", url, tenants, 1, settings), cpu)
        name = "sqlite buffered 1w"
        out["buffered"] = summarise(name, results, shares, BUFFERED_TARGET_PER_SECOND, postgres=False)
        out["checks"][name] = check_sqlite(path, tenants, settings.events + settings.tenants)
        out["durable"] = run_durable(
            "sqlite record()", url, _new_tenants(settings.tenants), settings.durable_events
        )
    return out


def run_all(settings: Settings) -> dict[str, Any]:
    """Every scenario, in one run; returns the report."""
    ctx = multiprocessing.get_context("spawn")
    date = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    pg = postgres_info()
    postgres = run_postgres(ctx, settings)
    sqlite = run_sqlite(ctx, settings)
    verify = run_verify(ctx, settings.verify_events, settings.profile)
    if verify.get("profile"):
        settings.profiles["verify_export"] = verify["profile"]
    verify.pop("profile", None)
    headline = postgres["buffered"][-1]["events_per_second"]
    return {
        "benchmark": "eventlog",
        "what": "event log appends (buffered and durable) and export verification",
        "date": date,
        "machine": {
            "cpus": os.cpu_count(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
            "postgres": pg,
        },
        "note": "numbers are from one run on this machine",
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "load_average_1m": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "settings": {
            "events_per_writer": settings.events,
            "durable_events": settings.durable_events,
            "verify_events": settings.verify_events,
            "batch_size": settings.batch_size,
            "tenants": settings.tenants,
            "checkpoint_every": CHECKPOINT_EVERY,
        },
        "postgres": postgres,
        "sqlite": sqlite,
        "ratios": {raw["name"]: round(headline / raw["events_per_second"], 3) for raw in postgres["raw"]},
        "verify": verify,
    }


# -- output ------------------------------------------------------------------------------------------------


def _verdict(section: dict[str, Any]) -> str:
    if "target_met" not in section:
        return "-"
    if "target_seconds" in section:
        return f"< {section['target_seconds']:g} s: {'met' if section['target_met'] else 'NOT MET'}"
    return f">= {section['target_events_per_second']:,.0f}/s: {'met' if section['target_met'] else 'NOT MET'}"


def _share(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "-"


def format_table(data: dict[str, Any]) -> str:
    """The report as plain text."""
    machine, settings, load, pg = (
        data["machine"],
        data["settings"],
        data["load_average_1m"],
        data["machine"]["postgres"],
    )
    postgres, sqlite, verify = data["postgres"], data["sqlite"], data["verify"]
    lines = [
        f"AIGOS event log: {data['what']}",
        f"machine: {machine['cpus']} CPUs, {machine['python']}, {machine['platform']}; date: {data['date']}",
        f"PostgreSQL {pg.get('server_version')} on 127.0.0.1 (fsync={pg.get('fsync')}, "
        f"synchronous_commit={pg.get('synchronous_commit')}); SQLite WAL, synchronous=NORMAL",
        f"note: {data['note']} (1-min load average {load['start']:.2f} at start, {load['end']:.2f} at end); "
        f"run {data['elapsed_seconds']:.0f} s",
        f"setup: {settings['tenants']} tenants shared by all writers, batch_size {settings['batch_size']}, "
        f"{settings['events_per_writer']:,} events per writer, pre-built; timed first enqueue -> last commit",
        "",
        f"{'buffered appends':<32} {'events':>8} {'s':>6} {'events/s':>9} {'per writer':>17} "
        f"{'py cpu':>6} {'pg cpu':>6} {'other':>5}  target",
    ]
    for section in [*postgres["buffered"], *postgres["raw"], sqlite["buffered"]]:
        per = "/".join(f"{w['events_per_second']:,.0f}" for w in section["per_writer"])
        lines.append(
            f"{section['name']:<32} {section['events']:>8} {section['seconds']:>6.2f} "
            f"{section['events_per_second']:>9,.0f} {per:>17} {_share(section['writers_cpu_share']):>6} "
            f"{_share(section['postgres_cpu_share']):>6} {_share(section['other_cpu_share']):>5}  "
            f"{_verdict(section)}"
        )
    lines.append(
        "(cpu: CPU time / wall time, 100% = one core; py = writer processes, pg = all postgres processes,"
    )
    lines.append(" other = rest of the machine; sqlite: one writer only, SQLite takes one writer at a time)")
    ratios = ", ".join(
        f"{value:.2f} of {name.removeprefix('postgres raw ')}" for name, value in data["ratios"].items()
    )
    lines.append(f"EventLog 2w / raw insert peer (same rows, no hash/lock/RLS): {ratios}")
    lines += [
        "",
        "seq check after each buffered run (count == max(seq) from 1, head == max, prev_hash linked):",
    ]
    for name, check in {**postgres["checks"], **sqlite["checks"]}.items():
        lines.append(
            f"  {name:<22} {check['tenants']}/{check['tenants_expected']} tenants, "
            f"{check['rows']:,}/{check['rows_expected']:,} rows, gap-free {check['gap_free']}, "
            f"linked {check['chain_linked']}, heads {check['heads_at_max_seq']}: "
            f"{'OK' if check['ok'] else 'FAILED'}"
        )
    lines += [
        "",
        f"{'durable record(), 1 per txn':<32} {'events':>8} {'s':>6} {'events/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8}  target",
    ]
    for section in (postgres["durable"], sqlite["durable"]):
        lines.append(
            f"{section['name']:<32} {section['events']:>8} {section['seconds']:>6.2f} "
            f"{section['events_per_second']:>9,.0f} {section['p50_ms']:>8.3f} {section['p99_ms']:>8.3f}  "
            f"{_verdict(section)}"
        )
    lines += [
        "",
        f"verify_export: {verify['events']:,} events + {verify['checkpoints']} checkpoints "
        f"({verify['export_mb']:,.0f} MB file, read line by line): {verify['verify_seconds']:.2f} s = "
        f"{verify['verify_events_per_second']:,.0f} events/s, {'valid' if verify['ok'] else 'INVALID'}; "
        f"target {_verdict(verify)}",
        f"  writing the export (not timed above): {verify['build_seconds']:.2f} s",
        f"  RSS of the verifying process: {verify['rss_start_mb']:.0f} MB before, "
        f"peak {verify['rss_peak_during_verify_mb']:.0f} MB during verify "
        f"(+{verify['verify_added_mb']:.0f} MB)",
    ]
    if verify["failure"]:
        lines.append(f"WARNING: verification failed: {verify['failure']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> Settings:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)

    def count(minimum: int) -> Callable[[str], int]:
        def convert(text: str) -> int:
            value = int(text)
            if value < minimum:
                raise argparse.ArgumentTypeError(f"must be at least {minimum}")
            return value

        return convert

    parser.add_argument(
        "--events", type=count(1), default=DEFAULT_EVENTS, help="Buffered events per writer process."
    )
    parser.add_argument(
        "--durable-events", type=count(1), default=DEFAULT_DURABLE_EVENTS, help="record() calls per backend."
    )
    parser.add_argument(
        "--verify-events",
        type=count(1),
        default=DEFAULT_VERIFY_EVENTS,
        help="Entries in the verified export.",
    )
    parser.add_argument(
        "--batch-size", type=count(1), default=DEFAULT_BATCH_SIZE, help="EventLog batch_size."
    )
    parser.add_argument(
        "--tenants", type=count(1), default=DEFAULT_TENANTS, help="Tenants the events spread over."
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the 1-writer PostgreSQL buffered run and verify_export (top functions to stderr).",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of tables.")
    args = parser.parse_args(argv)
    settings = Settings(
        events=args.events,
        durable_events=args.durable_events,
        verify_events=args.verify_events,
        batch_size=args.batch_size,
        tenants=args.tenants,
        profile=args.profile,
        json=args.json,
    )
    return settings


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run every scenario and print the report; returns the exit status."""
    settings = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the database is dropped and the writer processes stopped.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    data = run_all(settings)
    print(json.dumps(data, indent=2) if settings.json else format_table(data))
    for name, text in settings.profiles.items():
        print(f"\n-- cProfile of {name} (top by own time) --\n{text}", file=sys.stderr)
    checks = {**data["postgres"]["checks"], **data["sqlite"]["checks"]}
    return 0 if all(c["ok"] for c in checks.values()) and data["verify"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
