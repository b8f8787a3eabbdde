"""The event journal's cost on the request path: ``EventLog.enqueue()`` with and without it, in one run.

What a request pays to have its buffered event survive a killed process is one encoding and one
unbuffered ``write`` into the page cache (``journal.py``). This times, in one process and one run:

1. the floor: ``enqueue(event)`` with no journal (a deque append);
2. ``enqueue(event)`` with the journal: a telemetry-sized event (``spill.encode`` then ``os.write``);
3. ``enqueue(decision, aggregate_allowed=True)`` with and without the journal: an allowed decision only
   counted into its minute's aggregate; the journal writes one compact record;
4. ``enqueue_many(events)`` with the journal, in batches of ``--batch`` (the telemetry route: one write);
5. after each journaled case, the group fsync that follows (``Journal.sync()``, off the event loop in the
   server, timed here once per case), and the bytes written per event.

Events are built before any timing; each case enqueues ``--events`` events, ``--repeat`` times, each time
into a fresh ``EventLog`` (the queue never fills and no writer runs); the best and the median pass are
printed, per event in µs and as events/s, with the ratio to the floor of the same pass. The journal lives
in a temporary folder under ``--dir`` (default: the current directory, which should be on the disk a data
folder would be on: ``/tmp`` may be a tmpfs).

Run: ``.venv/bin/python bench/journal.py [--events N] [--repeat N] [--batch N] [--dir PATH] [--json]``.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``http``.

from __future__ import annotations

import sys
from pathlib import Path

_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aigos.core.signing import Signer
from aigos.server.audit.events import NewEvent
from aigos.server.audit.log import EventLog
from aigos.server.db import Database

TENANTS = 10
AGENTS = 50


def telemetry(count: int) -> list[NewEvent]:
    """Agent-reported tool outcomes, as ``POST /v1/telemetry`` queues them."""
    tenants = [uuid.uuid4() for _ in range(TENANTS)]
    return [
        NewEvent(
            tenant_id=tenants[i % TENANTS],
            event_type="tool.completed",
            actor_type="agent",
            actor_id=f"agent-{i % AGENTS}",
            agent_id=f"agent-{i % AGENTS}",
            source="agent",
            data={
                "tool": "web.fetch",
                "domain": "api.github.com",
                "duration_ms": 12.5,
                "status": 200,
                "n": i,
            },
            occurred_at=datetime.now(UTC),
            request_id=f"{i:032x}",
            trace_id=f"{i:032x}",
            span_id=f"{i:016x}",
        )
        for i in range(count)
    ]


def decisions(count: int) -> list[NewEvent]:
    """Allowed ``policy.checked`` events, as the check route queues them."""
    tenants = [uuid.uuid4() for _ in range(TENANTS)]
    agents = [str(uuid.uuid4()) for _ in range(AGENTS)]
    return [
        NewEvent(
            tenant_id=tenants[i % TENANTS],
            event_type="policy.checked",
            actor_type="agent",
            actor_id=agents[i % AGENTS],
            agent_id=agents[i % AGENTS],
            outcome="allowed",
            data={"decision_id": str(uuid.uuid4()), "action": "web.fetch", "resource": "api.github.com"},
        )
        for i in range(count)
    ]


class Case:
    """One way of enqueueing, timed over the same events each pass."""

    def __init__(self, name: str, journaled: bool, run: Callable[[EventLog, list[NewEvent]], None]) -> None:
        self.name = name
        self.journaled = journaled
        self.run = run


def _each(log: EventLog, events: list[NewEvent]) -> None:
    enqueue = log.enqueue
    for event in events:
        enqueue(event)


def _aggregated(log: EventLog, events: list[NewEvent]) -> None:
    enqueue = log.enqueue
    for event in events:
        enqueue(event, aggregate_allowed=True)


def _batches(size: int) -> Callable[[EventLog, list[NewEvent]], None]:
    def run(log: EventLog, events: list[NewEvent]) -> None:
        for start in range(0, len(events), size):
            log.enqueue_many(events[start : start + size])

    return run


async def _pass(
    case: Case, events: list[NewEvent], database: Database, signer: Signer, folder: Path
) -> dict[str, float]:
    log = EventLog(
        database,
        signer,
        queue_size=len(events) + 1,
        batch_size=len(events) + 1,
        journal_dir=folder if case.journaled else None,
    )
    if log.journal is not None:
        log.journal.open()
    gc.collect()
    started = time.perf_counter_ns()
    case.run(log, events)
    elapsed = time.perf_counter_ns() - started
    result = {"us_per_event": elapsed / 1000 / len(events)}
    if log.journal is not None:
        size = sum(path.stat().st_size for path in log.journal.path.glob("*.jsonl"))
        synced = time.perf_counter_ns()
        await log.journal.sync()
        result["fsync_ms"] = (time.perf_counter_ns() - synced) / 1e6
        result["bytes_per_event"] = size / len(events)
        log.journal.close(remove=True)
    return result


async def run_all(events: int, repeat: int, batch: int, where: Path) -> dict[str, Any]:
    """Every case, ``repeat`` passes each, interleaved so load changes hit every case alike."""
    reported, checked = telemetry(events), decisions(events)
    cases = [
        (Case("floor: enqueue, no journal", False, _each), reported),
        (Case("enqueue + journal (telemetry event)", True, _each), reported),
        (Case(f"enqueue_many({batch}) + journal", True, _batches(batch)), reported),
        (Case("aggregated decision, no journal", False, _aggregated), checked),
        (Case("aggregated decision + journal", True, _aggregated), checked),
    ]
    signer = Signer.from_seed(b"\x01" * 32)
    passes: dict[str, list[dict[str, float]]] = {case.name: [] for case, _ in cases}
    with tempfile.TemporaryDirectory(prefix="aigos-bench-journal-", dir=where) as tmp:
        folder = Path(tmp)
        # Never opened: the event log only touches its database when it writes, which no case does.
        database = Database(f"sqlite+aiosqlite:///{folder / 'unused.db'}")
        for _ in range(repeat):
            for case, items in cases:
                passes[case.name].append(await _pass(case, items, database, signer, folder / "journal"))
        await database.dispose()
    floors = passes[cases[0][0].name]
    aggregate_floors = passes[cases[3][0].name]
    rows = []
    for case, _ in cases:
        runs = passes[case.name]
        floor = aggregate_floors if "aggregated" in case.name else floors
        per_event = [run["us_per_event"] for run in runs]
        ratios = [run["us_per_event"] / base["us_per_event"] for run, base in zip(runs, floor, strict=True)]
        row: dict[str, Any] = {
            "case": case.name,
            "us_per_event_best": round(min(per_event), 3),
            "us_per_event_median": round(statistics.median(per_event), 3),
            "events_per_second_best": round(1e6 / min(per_event)),
            "ratio_to_floor_median": round(statistics.median(ratios), 2),
            "passes_us": [round(value, 3) for value in per_event],
        }
        if case.journaled:
            row["bytes_per_event"] = round(runs[0]["bytes_per_event"], 1)
            row["fsync_ms_median"] = round(statistics.median(run["fsync_ms"] for run in runs), 2)
        rows.append(row)
    return {
        "benchmark": "journal",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "settings": {"events": events, "repeat": repeat, "batch": batch, "dir": str(where)},
        "cases": rows,
    }


def format_table(data: dict[str, Any]) -> str:
    """The report as plain text."""
    settings, machine = data["settings"], data["machine"]
    lines = [
        f"journal bench: {settings['events']:,} events x {settings['repeat']} passes, "
        f"{machine['cpus']} CPUs, {machine['python']}, load {machine['load_average_1m']}, "
        f"dir {settings['dir']}",
        f"{'case':<40} {'best µs':>8} {'median µs':>10} {'events/s':>10} {'x floor':>8} {'B/event':>8} "
        f"{'fsync ms':>9}",
    ]
    for row in data["cases"]:
        lines.append(
            f"{row['case']:<40} {row['us_per_event_best']:>8.3f} {row['us_per_event_median']:>10.3f} "
            f"{row['events_per_second_best']:>10,} {row['ratio_to_floor_median']:>8.2f} "
            f"{row.get('bytes_per_event', '-'):>8} {row.get('fsync_ms_median', '-'):>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the bench and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="Events enqueued per pass.")
    parser.add_argument("--repeat", type=int, default=5, help="Passes per case.")
    parser.add_argument("--batch", type=int, default=100, help="Events per enqueue_many() call.")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="Where the journal's folder is made.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
    args = parser.parse_args(argv)
    data = asyncio.run(run_all(args.events, args.repeat, args.batch, args.dir))
    print(json.dumps(data, indent=2) if args.json else format_table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
