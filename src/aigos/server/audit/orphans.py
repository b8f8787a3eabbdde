"""The journals of processes that are gone: claimed by a live process and read back for replay.

A journal (``journal.py``) whose process died still holds what that process acknowledged and had not
written durably to the log. ``claim`` locks such journals (their owner's lock can be taken only once the
kernel dropped it), and ``read`` gives back a segment's records; lines that cannot be read (a write torn by
a power loss, a damaged disk) come back as ``Loss``es, with the times around them and the tenant they name
when the tear came after it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aigos.server.audit import spill
from aigos.server.audit.events import NewEvent
from aigos.server.audit.journal import LOCK_NAME, SEGMENT_GLOB, Bucket, remove_folder

# A torn line still names its tenant if the tear came after it: each record writes the tenant first.
_TENANT = re.compile(
    rb'^\["[ead]",(?:\{"tenant_id":)?"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"'
)


@dataclass
class Orphan:
    """The journal of a process that is gone, claimed (locked) by this one to replay it."""

    path: Path
    lock_fd: int

    @property
    def owner(self) -> str:
        """The process that wrote it: pid and start time."""
        return self.path.name

    def segments(self) -> list[Path]:
        """Its segments, oldest first."""
        return sorted(self.path.glob(SEGMENT_GLOB))

    def remove(self) -> None:
        """Everything in it is in the log: delete it."""
        try:
            remove_folder(self.path)
        finally:
            self.release()

    def release(self) -> None:
        """Give the claim up and keep the journal (its replay failed; a later start tries again)."""
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def claim(root: Path) -> list[Orphan]:
    """Lock the journals under ``root`` whose process is gone and nobody else replays; oldest first."""
    if not root.is_dir():
        return []
    claimed: list[Orphan] = []
    for path in sorted(root.iterdir(), key=lambda item: item.name):
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # Its process is alive, or another process is replaying it.
            os.close(fd)
            continue
        if not (path / LOCK_NAME).exists():
            # Replayed and removed by another process between our open and our lock.
            os.close(fd)
            continue
        claimed.append(Orphan(path, fd))
    return claimed


@dataclass
class Loss:
    """Lines of a journal that could not be read back: what they held was acknowledged and is lost."""

    tenant_id: uuid.UUID | None
    segment: str
    offset: int
    lines: int = 0
    bytes: int = 0
    after: str | None = None
    before: str | None = None


@dataclass
class Contents:
    """What one segment holds."""

    events: list[NewEvent] = field(default_factory=list)
    decisions: dict[uuid.UUID, Bucket] = field(default_factory=dict)
    dropped: dict[uuid.UUID, Bucket] = field(default_factory=dict)
    losses: list[Loss] = field(default_factory=list)


def read(path: Path) -> Contents:
    """The records of a segment; what cannot be read is reported as losses, with the times around them."""
    contents = Contents()
    raw = path.read_bytes()
    created = _segment_created(path)
    last = created
    loss: Loss | None = None
    offset = 0
    for line in raw.split(b"\n"):
        start, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        try:
            when = _apply(json.loads(line), contents) or last
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            named = _tenant_of(line)
            if loss is None or loss.tenant_id != named:
                if loss is not None:
                    contents.losses.append(loss)
                loss = Loss(named, path.name, start, after=last)
            loss.lines += 1
            loss.bytes += min(len(line) + 1, len(raw) - start)
            continue
        if loss is not None:
            loss.before = when
            contents.losses.append(loss)
            loss = None
        last = when
    if loss is not None:
        loss.before = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()
        contents.losses.append(loss)
    return contents


def _apply(record: Any, contents: Contents) -> str | None:
    kind = record[0]
    if kind == "e":
        event = spill.from_record(record[1])
        contents.events.append(event)
        return event.occurred_at.isoformat() if event.occurred_at else None
    if kind == "a":
        _, tenant, minute, agent, bucket_id = record
        bucket = _bucket(contents.decisions, tenant, minute, bucket_id)
        bucket.counts[str(agent)] += 1
        return datetime.strptime(minute, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC).isoformat()
    if kind == "d":
        _, tenant, reason, bucket_id = record
        _bucket(contents.dropped, tenant, reason, bucket_id).counts[""] += 1
        return None
    raise ValueError(f"unknown journal record {kind!r}")


def _bucket(buckets: dict[uuid.UUID, Bucket], tenant: str, label: str, bucket_id: str) -> Bucket:
    event_id = uuid.UUID(bucket_id)
    bucket = buckets.get(event_id)
    if bucket is None:
        bucket = buckets[event_id] = Bucket(uuid.UUID(tenant), str(label), event_id=event_id)
    return bucket


def _tenant_of(line: bytes) -> uuid.UUID | None:
    found = _TENANT.match(line)
    return uuid.UUID(found.group(1).decode()) if found else None


def _segment_created(path: Path) -> str | None:
    try:
        millis = int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat()
