"""The event log's journal: every buffered event on local disk before its caller is answered.

``EventLog.enqueue()`` acknowledges an event before the batch writer appends it. So that a process killed in
between (SIGKILL, the OOM killer, a crash) loses nothing silently, each acknowledged event, each allowed
decision counted only into a per-minute aggregate, and each event dropped because the queue was full is
first written to this process's journal with one unbuffered ``write``. Once that returns, the kernel's page
cache holds the bytes: the death of the process cannot take them back. A background task fsyncs the journal
in groups (``sync()``, off the event loop) against a crash of the machine itself; a power loss can still lose
what was acknowledged since the last fsync and not yet committed to the database.

Layout: ``<data>/journal/<owner>/`` per process (``owner`` is its pid and start time), holding ``lock``,
flock-ed exclusively for as long as the process lives (the kernel drops it when the process dies), and
segments ``<number>-<created, ms>.jsonl``. One record per line:

- ``["e", {event}]``: an event, as ``spill.encode`` writes it (tenant first, so a torn line still names it);
- ``["a", tenant, minute, agent, bucket]``: one allowed decision counted into the aggregate whose entry will
  have the event id ``bucket``;
- ``["d", tenant, reason, bucket]``: one event dropped, counted into the ``audit.events_dropped`` entry
  ``bucket``.

Each record is held by the event id it will be logged under until the batch writer's commit of that event
is durable (``release``); a segment all of whose records are released is deleted once it is no longer the
one being written (segments are rotated by size and age). A process that starts claims the journals of
processes that are gone (``claim``: their lock can be taken) and the event log replays them, skipping what
the log already holds by event id; lines that cannot be read (a write torn by a power loss, a damaged disk)
come back as ``Loss``es, which the log records. Reading them back is ``orphans.py``'s.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import structlog

from aigos.server.audit import spill
from aigos.server.audit.events import NewEvent
from aigos.server.datadir import private_dir

log = structlog.get_logger("aigos.audit")

LOCK_NAME = "lock"
SEGMENT_GLOB = "*.jsonl"
#: A segment is rotated once it holds this much, so released ones can be deleted...
SEGMENT_BYTES = 32 * 1024 * 1024
#: ...or once it is this old (seconds) and not empty.
SEGMENT_SECONDS = 60.0
#: The system log: where a loss is recorded when no tenant can be named (the nil UUID is nobody's tenant).
SYSTEM_TENANT = uuid.UUID(int=0)
_STAGING = ".new-"


@dataclass(slots=True)
class Bucket:
    """Records that become one entry: a tenant's allowed decisions of one minute, or its dropped events.

    ``label`` is the minute (``%Y-%m-%dT%H:%MZ``) or the reason of the drop; ``counts`` are by agent (one
    key, ``""``, for drops). ``event_id`` is the entry's, written into every record, so a replay of the
    journal and the live writer produce the same entry and the log keeps only one of them.
    """

    tenant_id: uuid.UUID
    label: str
    counts: Counter[str] = field(default_factory=Counter)
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    tenant_text: str = ""
    id_text: str = ""

    def __post_init__(self) -> None:
        self.tenant_text = str(self.tenant_id)
        self.id_text = str(self.event_id)


def event_record(event: NewEvent) -> bytes:
    """The journal line (with its newline) of an event."""
    return b'["e",' + spill.encode(event) + b"]\n"


def decision_record(bucket: Bucket, agent: str) -> bytes:
    """The journal line of one allowed decision of ``agent`` counted into ``bucket``."""
    return _compact(("a", bucket.tenant_text, bucket.label, agent, bucket.id_text))


def drop_record(bucket: Bucket) -> bytes:
    """The journal line of one event dropped into ``bucket``."""
    return _compact(("d", bucket.tenant_text, bucket.label, bucket.id_text))


def _compact(fields: tuple[str, ...]) -> bytes:
    try:
        return orjson.dumps(fields) + b"\n"
    except orjson.JSONEncodeError:
        # An agent id no UTF-8 encoder takes (a lone surrogate): escaped, as spill.encode does.
        return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


class Journal:
    """This process's journal: records written before callers are answered, held until their commit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.owner = f"{os.getpid()}-{time.time_ns()}"
        self.path = root / self.owner
        #: Why the last write (or opening) failed; None while the journal takes writes.
        self.error: str | None = None
        self.failures_total = 0
        self.closed = False
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._number = 0
        self._paths: dict[int, Path] = {}
        self._opened_at = 0.0
        self._size = 0
        self._dirty = False
        #: Records not yet released, per segment number.
        self._outstanding: dict[int, int] = {}
        #: The segment of each held event, and the segments (with counts) of each held bucket.
        self._single: dict[uuid.UUID, int] = {}
        self._buckets: dict[uuid.UUID, Counter[int]] = {}

    # -- opening and closing ----------------------------------------------------------------------------

    def open(self) -> None:
        """Create this process's folder, locked from its first moment, with a first segment.

        Never raises: a journal that cannot be opened takes no writes (``error`` says why) and ``maintain()``
        tries again.
        """
        try:
            self._open()
        except OSError as error:
            self._failed(error, "audit_journal_open_failed")

    def _open(self) -> None:
        self.closed = False
        private_dir(self.root)
        # Built under a name claimers skip, locked, and only then given its name: a claimer never sees it
        # unlocked while this process lives.
        staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=self.root))
        fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, str(os.getpid()).encode())
            staging.rename(self.path)
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd
        self._open_segment()
        self.error = None

    def _open_segment(self) -> None:
        number = self._number + 1
        path = self.path / f"{number:08d}-{time.time_ns() // 1_000_000}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._fd, self._number, self._size, self._dirty = fd, number, 0, False
        self._paths[number] = path
        self._outstanding[number] = 0
        self._opened_at = time.monotonic()

    def close(self, *, remove: bool) -> None:
        """Stop taking writes. With ``remove`` (everything is in the log or a spill file) delete the journal;
        otherwise fsync it and leave it, unlocked, for the next process to replay."""
        if self.closed:
            return
        self.closed = True
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                if not remove:
                    os.fsync(fd)
                os.close(fd)
            if remove and self._lock_fd is not None:
                remove_folder(self.path)
        except OSError:
            log.exception("audit_journal_close_failed", path=str(self.path))
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writing ------------------------------------------------------------------------------------------

    def write(self, record: bytes, event_id: uuid.UUID) -> None:
        """Write an event's record, held until ``release(event_id)``; OSError if it cannot be written."""
        self._write(record)
        number = self._number
        self._outstanding[number] += 1
        self._single[event_id] = number

    def write_many(self, records: bytes, event_ids: Sequence[uuid.UUID]) -> None:
        """Write the records of several events in one write (all of them, or none and OSError)."""
        self._write(records)
        number = self._number
        self._outstanding[number] += len(event_ids)
        single = self._single
        for event_id in event_ids:
            single[event_id] = number

    def count(self, record: bytes, bucket: uuid.UUID) -> None:
        """Write one record of ``bucket``, held until ``release(bucket)``; OSError if it cannot."""
        self._write(record)
        number = self._number
        self._outstanding[number] += 1
        held = self._buckets.get(bucket)
        if held is None:
            held = self._buckets[bucket] = Counter()
        held[number] += 1

    def _write(self, data: bytes) -> None:
        fd = self._fd
        try:
            if fd is None:
                raise OSError(errno.EBADF, "the event journal is not open")
            written = os.write(fd, data)
            if written != len(data):
                # Cut the partial record: the caller is told it was not kept, so a replay must not report
                # it lost.
                os.ftruncate(fd, self._size)
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
        except OSError as error:
            self._failed(error, "audit_journal_write_failed")
            raise
        self._size += written
        self._dirty = True
        if self.error is not None:
            log.warning("audit_journal_writable_again", path=str(self.path))
            self.error = None

    def _failed(self, error: OSError, event: str) -> None:
        self.failures_total += 1
        if self.error is None:
            log.error(event, path=str(self.path), error=str(error))
        self.error = f"{type(error).__name__}: {error}"

    # -- releasing ----------------------------------------------------------------------------------------

    def release(self, event_id: uuid.UUID) -> None:
        """The entry ``event_id`` (an event or a bucket) is durably in the log (or a spill file)."""
        number = self._single.pop(event_id, None)
        if number is not None:
            self._settle(number, 1)
            return
        held = self._buckets.pop(event_id, None)
        if held is not None:
            for number, records in held.items():
                self._settle(number, records)

    def _settle(self, number: int, records: int) -> None:
        left = self._outstanding.get(number, 0) - records
        if left > 0 or number == self._number:
            self._outstanding[number] = max(left, 0)
            return
        self._outstanding.pop(number, None)
        self._delete(number)

    def _delete(self, number: int) -> None:
        path = self._paths.pop(number, None)
        if path is None:
            return
        try:
            path.unlink(missing_ok=True)
        except OSError:
            log.exception("audit_journal_segment_not_deleted", path=str(path))

    @property
    def held(self) -> int:
        """Records written and not yet released."""
        return sum(self._outstanding.values())

    # -- background work ----------------------------------------------------------------------------------

    async def maintain(self) -> None:
        """Reopen a journal that could not be opened, rotate a full or old segment, and fsync."""
        if self.closed:
            return
        if self._lock_fd is None:
            self.open()
            return
        due = self._size >= SEGMENT_BYTES or time.monotonic() - self._opened_at >= SEGMENT_SECONDS
        if self._size and due:
            await self._rotate()
        await self.sync()

    async def _rotate(self) -> None:
        old_fd, old_number, dirty = self._fd, self._number, self._dirty
        try:
            self._open_segment()
        except OSError as error:
            # The current segment goes on taking writes.
            self._failed(error, "audit_journal_rotate_failed")
            return
        if old_fd is not None:
            try:
                if dirty:
                    await asyncio.to_thread(os.fdatasync, old_fd)
            except OSError:
                log.exception("audit_journal_sync_failed", path=str(self.path))
            finally:
                os.close(old_fd)
        if not self._outstanding.get(old_number):
            self._outstanding.pop(old_number, None)
            self._delete(old_number)

    async def sync(self) -> None:
        """fsync what was written since the last time, in a worker thread (requests keep being served)."""
        fd = self._fd
        if fd is None or not self._dirty:
            return
        self._dirty = False
        try:
            await asyncio.to_thread(os.fdatasync, fd)
        except OSError:
            self._dirty = True
            log.exception("audit_journal_sync_failed", path=str(self.path))


def remove_folder(folder: Path) -> None:
    """Delete a journal folder: its segments, its lock, itself."""
    for path in folder.glob(SEGMENT_GLOB):
        path.unlink(missing_ok=True)
    (folder / LOCK_NAME).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        # Something else was put there: left for an operator; without its lock nobody claims it again.
        log.warning("audit_journal_folder_not_removed", path=str(folder))
