"""Verifying a large audit export with ``aigos audit verify``: time and peak resident memory by size.

For each ``--events`` size N this:

1. writes a valid export of one tenant to a temporary file, streaming (nothing but the chain head and the
   Merkle compact range is held while writing): a header, N event lines (policy decisions, as the server
   records them), a signed checkpoint every ``--checkpoint-every`` entries and after the last one;
2. runs ``python -m aigos audit verify FILE --json`` in a child process, on the same interpreter, timing
   it from spawn to exit (interpreter start-up included, about 0.2 s) and reading that child's own CPU
   time and peak RSS from ``os.wait4`` (the rusage of exactly that child, where ``RUSAGE_CHILDREN`` would
   give the largest peak of every child so far). On a shared machine the CPU time is the steadier figure:
   the wall time also counts the time other processes held the cores;
3. checks the child's report says ``ok`` with N entries.

Memory that does not depend on N shows as the same peak RSS at every size: the printed slope (MB per
million events, between the smallest and the largest size) is what an export's size costs.

The files live under ``--dir`` (default: the system temporary folder) and are deleted afterwards unless
``--keep``. 1,000,000 events are about 560 MB on disk.

Run: ``.venv/bin/python bench/verify.py [--events N ...] [--checkpoint-every N] [--dir PATH] [--keep]
[--json]``.
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
import json
import os
import platform
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import orjson

from aigos.core import auditlog
from aigos.core.canonical import canonical
from aigos.core.merkle import CompactRange
from aigos.core.signing import Signer, b64url

MB = 1024 * 1024
DEFAULT_EVENTS = (1_000_000,)
DEFAULT_CHECKPOINT_EVERY = 100_000
#: The target of issue #23: a million events in under ten seconds, any size in under 100 MB.
TARGET_SECONDS_PER_MILLION = 10.0
TARGET_RSS_MB = 100.0
TOOLS = ("web.fetch", "email.send", "db.query", "file.write", "shell.exec", "http.post")
DOMAINS = ("api.github.com", "example.org", "internal.corp", "s3.amazonaws.com", "pypi.org", "slack.com")
SIGNER_SEED = b"aigos-bench-verify-signing-seed-"


def decision_data(i: int) -> dict[str, Any]:
    """The ``data`` of the ``i``-th synthetic policy decision (one in five denied)."""
    allowed = i % 5 != 0
    tool, domain = TOOLS[i % len(TOOLS)], DOMAINS[(i // 7) % len(DOMAINS)]
    reason = f"allowed by rule allow-{tool}" if allowed else f"denied: {domain} is not on the allowlist"
    return {"tool": tool, "domain": domain, "allowed": allowed, "reason": reason}


def write_export(out: BinaryIO, events: int, checkpoint_every: int) -> int:
    """Write a valid export of ``events`` entries to ``out``, line by line; returns the checkpoint count."""
    signer = Signer.from_seed(SIGNER_SEED)
    tenant = str(uuid.uuid4())
    header = {
        "kind": "header",
        "format": auditlog.EXPORT_FORMAT,
        "tenant_id": tenant,
        "keys": [{"key_id": signer.key_id, "public_key": b64url(signer.public_key)}],
        "anchor": None,
    }
    out.write(canonical(header) + b"\n")
    compact = CompactRange()
    head = auditlog.GENESIS_HASH
    base = datetime(2026, 1, 1, tzinfo=UTC)
    checkpoints = 0
    for seq in range(1, events + 1):
        moment = (base + timedelta(microseconds=seq * 250)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        agent = f"agent-{seq % 50}"
        data = decision_data(seq)
        entry: dict[str, Any] = {
            "tenant_id": tenant,
            "seq": seq,
            "event_id": str(uuid.uuid4()),
            "event_type": "policy.decision",
            "agent_id": agent,
            "timestamp": moment,
            "recorded_at": moment,
            "actor": {"type": "agent", "id": agent},
            "source": "server",
            "outcome": "allowed" if data["allowed"] else "denied",
            "request_id": f"{seq:032x}",
            "trace_id": None,
            "span_id": None,
            "data": data,
            "prev_hash": head,
        }
        head = auditlog.fields_hash(entry)
        compact.append(auditlog.entry_leaf(head))
        # As the server writes them: plain orjson, the record kind first (the verifier re-serialises).
        out.write(orjson.dumps({"kind": "event", **entry, "hash": head}) + b"\n")
        if seq % checkpoint_every == 0 or seq == events:
            payload = auditlog.checkpoint_payload(
                tenant, seq, compact.root().hex(), head, moment, signer.key_id
            )
            out.write(canonical({"kind": "checkpoint", **auditlog.sign_checkpoint(signer, payload)}) + b"\n")
            checkpoints += 1
    return checkpoints


@dataclass
class Run:
    """One verified size."""

    events: int
    checkpoints: int
    file_mb: float
    write_seconds: float
    verify_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    ok: bool
    entries: int
    failure: str | None

    @property
    def events_per_second(self) -> float:
        """Verified entries per second of the child's wall time."""
        return self.events / self.verify_seconds

    @property
    def target_met(self) -> bool:
        """Whether this size met both targets (time scaled to the size)."""
        seconds = TARGET_SECONDS_PER_MILLION * self.events / 1_000_000
        return self.ok and self.verify_seconds < seconds and self.peak_rss_mb < TARGET_RSS_MB

    def to_json(self) -> dict[str, Any]:
        """A JSON form for ``--json``."""
        return {
            **self.__dict__,
            "events_per_second": round(self.events_per_second, 1),
            "target_met": self.target_met,
        }


def verify_in_child(path: Path) -> tuple[float, float, float, dict[str, Any]]:
    """Run the CLI on ``path``: wall seconds, the child's CPU seconds, its peak RSS in MB, its report."""
    command = [sys.executable, "-m", "aigos", "audit", "verify", str(path), "--json"]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert child.stdout is not None
    output = child.stdout.read()
    # wait4 reaps the child and returns its own rusage; Popen must not reap it first.
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    peak = usage.ru_maxrss / (MB if sys.platform == "darwin" else 1024)
    try:
        report = json.loads(output)
    except ValueError:
        report = {
            "ok": False,
            "entries": 0,
            "failure": {"reason": f"exit {child.returncode}: {output[:200]!r}"},
        }
    return seconds, usage.ru_utime + usage.ru_stime, peak, report


def run_size(events: int, checkpoint_every: int, folder: Path, keep: bool) -> Run:
    """Write and verify one export of ``events`` entries."""
    path = folder / f"aigos-audit-bench-{events}.ndjson"
    started = time.perf_counter()
    with path.open("wb", buffering=1 << 20) as out:
        checkpoints = write_export(out, events, checkpoint_every)
    write_seconds = time.perf_counter() - started
    try:
        seconds, cpu, peak, report = verify_in_child(path)
        failure = report.get("failure")
        return Run(
            events=events,
            checkpoints=checkpoints,
            file_mb=round(path.stat().st_size / MB, 1),
            write_seconds=round(write_seconds, 2),
            verify_seconds=round(seconds, 3),
            cpu_seconds=round(cpu, 3),
            peak_rss_mb=round(peak, 1),
            ok=bool(report.get("ok")) and report.get("entries") == events,
            entries=int(report.get("entries") or 0),
            failure=None if not failure else str(failure.get("reason")),
        )
    finally:
        if not keep:
            path.unlink(missing_ok=True)


def format_table(runs: list[Run], machine: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [
        f"aigos audit verify on {machine['python']} ({machine['cpus']} CPUs, load {machine['load']})",
        f"{'events':>12} {'file MB':>9} {'write s':>8} {'verify s':>9} {'CPU s':>7} {'events/s':>10} "
        f"{'peak RSS MB':>12}  result",
    ]
    for run in runs:
        verdict = "ok" if run.ok else f"FAILED: {run.failure}"
        target = "target met" if run.target_met else "target missed"
        lines.append(
            f"{run.events:>12,} {run.file_mb:>9,.0f} {run.write_seconds:>8.1f} {run.verify_seconds:>9.2f} "
            f"{run.cpu_seconds:>7.2f} "
            f"{run.events_per_second:>10,.0f} {run.peak_rss_mb:>12.1f}  {verdict}, {target}"
        )
    if len(runs) > 1:
        lines.append(f"peak RSS slope: {_slope(runs):+.2f} MB per million events")
    lines.append(
        f"targets: < {TARGET_SECONDS_PER_MILLION:.0f} s per million events, < {TARGET_RSS_MB:.0f} MB peak RSS"
    )
    return "\n".join(lines)


def _slope(runs: list[Run]) -> float:
    small = min(runs, key=lambda run: run.events)
    large = max(runs, key=lambda run: run.events)
    if large.events == small.events:
        return 0.0
    return (large.peak_rss_mb - small.peak_rss_mb) / ((large.events - small.events) / 1_000_000)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)

    def count(text: str) -> int:
        value = int(text.replace("_", ""))
        if value < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        return value

    parser.add_argument(
        "--events", type=count, nargs="+", default=list(DEFAULT_EVENTS), help="Export sizes to verify."
    )
    parser.add_argument("--checkpoint-every", type=count, default=DEFAULT_CHECKPOINT_EVERY)
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the exports.")
    parser.add_argument("--keep", action="store_true", help="Keep the export files.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write, verify and report every size; returns the exit status (1 if one did not verify)."""
    args = parse_args(argv)
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load": " ".join(f"{value:.2f}" for value in os.getloadavg()),
    }
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        # Kept files go beside the scratch folder, which is removed either way.
        folder = Path(args.dir or tempfile.gettempdir()) if args.keep else Path(scratch)
        runs: list[Run] = []
        for events in sorted(args.events):
            run = run_size(events, args.checkpoint_every, folder, args.keep)
            print(f"{events:,} events: {run.verify_seconds:.2f} s, {run.peak_rss_mb:.1f} MB", file=sys.stderr)
            runs.append(run)
    if args.json:
        body = {"machine": machine, "runs": [run.to_json() for run in runs]}
        if len(runs) > 1:
            body["rss_slope_mb_per_million"] = round(_slope(runs), 3)
        print(json.dumps(body, indent=2))
    else:
        print(format_table(runs, machine))
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
