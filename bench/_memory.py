"""Resident memory of a server, process by process: snapshots at named stages, and a series over a soak.

A snapshot reads every process of the server's tree (``bench._server.rss_by_process``): the supervisor,
each worker and, with several workers, multiprocessing's resource tracker. ``worker_pids`` says which
ones serve requests (the supervisor itself when it runs the app alone). ``slope_mb_per_minute`` fits a
least-squares line through a process's samples after a warm-up, to say whether memory stays flat.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench._server import rss_by_process

MB = 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    """RSS of each process of a server at one moment (``seconds`` since the series began, if in one)."""

    stage: str
    #: pid -> (role, RSS bytes)
    processes: dict[int, tuple[str, int]]
    seconds: float = 0.0

    @classmethod
    def take(cls, pid: int, stage: str, seconds: float = 0.0) -> Snapshot:
        """Read the tree of server ``pid`` now."""
        return cls(stage, {p: (role, rss) for role, p, rss in rss_by_process(pid)}, seconds)

    @property
    def total(self) -> int:
        """RSS of all processes together, bytes."""
        return sum(rss for _, rss in self.processes.values())

    def of(self, pids: Sequence[int]) -> int:
        """RSS of the processes ``pids`` together, bytes (those gone count 0)."""
        return sum(self.processes[p][1] for p in pids if p in self.processes)


def worker_pids(snapshot: Snapshot) -> list[int]:
    """The processes serving requests: the workers, or the supervisor when it runs the app itself."""
    workers = sorted(p for p, (role, _) in snapshot.processes.items() if role == "worker")
    return workers or [p for p, (role, _) in snapshot.processes.items() if role == "supervisor"]


def names(snapshot: Snapshot) -> dict[int, str]:
    """A column name per process: ``supervisor``, ``worker 1``, ``worker 2``, ..."""
    out: dict[int, str] = {}
    workers = 0
    for p, (role, _) in sorted(snapshot.processes.items()):
        if role == "worker":
            workers += 1
            out[p] = f"worker {workers}"
        else:
            out[p] = role
    return out


@dataclass
class Series:
    """Snapshots taken about every ``interval`` seconds: call ``sample`` between chunks of load that long."""

    pid: int
    interval: float
    started: float = field(default_factory=time.monotonic)
    samples: list[Snapshot] = field(default_factory=list)

    def sample(self) -> None:
        """Take a snapshot now."""
        elapsed = time.monotonic() - self.started
        self.samples.append(Snapshot.take(self.pid, f"{elapsed:.0f} s", elapsed))

    @property
    def elapsed(self) -> float:
        """Seconds since the series began."""
        return time.monotonic() - self.started


def slope_mb_per_minute(samples: Sequence[Snapshot], pid: int, after_seconds: float) -> float | None:
    """Least-squares growth of ``pid``'s RSS in MB per minute over the samples after ``after_seconds``.

    ``None`` with fewer than two such samples.
    """
    points = [
        (s.seconds, s.processes[pid][1] / MB)
        for s in samples
        if s.seconds >= after_seconds and pid in s.processes
    ]
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_m = sum(m for _, m in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (m - mean_m) for t, m in points) / spread * 60


def format_snapshots(snapshots: Sequence[Snapshot], reference: Snapshot) -> list[str]:
    """A table: a line per snapshot, a column per process of ``reference`` (MB), and the total."""
    columns = names(reference)
    header = f"{'RSS MB':<34}" + "".join(f"{name:>18}" for name in columns.values()) + f"{'total':>10}"
    lines = [header]
    for s in snapshots:
        cells = "".join(
            f"{s.processes[p][1] / MB:>18.1f}" if p in s.processes else f"{'-':>18}" for p in columns
        )
        lines.append(f"{s.stage:<34}{cells}{s.total / MB:>10.1f}")
    return lines
