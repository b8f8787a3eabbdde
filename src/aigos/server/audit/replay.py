"""What earlier processes left behind, into the log: spill files and the journals of processes that are gone.

Run at start, before anything new is appended, and now and then by a running process for the journal of a
worker that died beside it. Events already in the log (a replay cut short, or done twice) are skipped by id;
each tenant's log then records ``audit.events_replayed``, and what a journal held but cannot give back is
recorded as ``audit.events_lost``. A file is removed only once all of it is in the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import structlog

from aigos.server.audit import orphans, spill
from aigos.server.audit.events import NewEvent
from aigos.server.audit.journal import Bucket
from aigos.server.audit.records import (
    Tallies,
    aggregated_event,
    dropped_event,
    loss_event,
    replayed_event,
)
from aigos.server.audit.writer import BatchWriter

log = structlog.get_logger("aigos.audit")


class Replay:
    """Replays spill files and orphaned journals through the event log's batch writer."""

    def __init__(
        self,
        writer: BatchWriter,
        tallies: Tallies,
        *,
        spill_dir: Path | None,
        journal_dir: Path | None,
    ) -> None:
        self.writer = writer
        self.tallies = tallies
        self.spill_dir = spill_dir
        self.journal_dir = journal_dir

    async def replay_spilled(self) -> int:
        """Append the events of spill files left by earlier processes; returns how many were appended.

        Events already in the log (a replay cut short) are skipped by id; each tenant's log then records
        ``audit.events_replayed``. A file is removed once all of it is in the log; raises (keeping the
        file for the next start) if the database cannot take it.
        """
        if self.spill_dir is None:
            return 0
        appended = 0
        for path in spill.claim(self.spill_dir):
            events = spill.read(path)
            appended += await self._replay(events, {"file": path.name})
            path.unlink()
            log.warning("audit_spill_replayed", path=str(path), events=len(events))
        return appended

    async def replay_journals(self) -> int:
        """Append what the journals of processes that are gone hold and the log does not; returns how many
        entries were appended.

        A journal whose process still runs is locked and left alone. Unreadable lines become
        ``audit.events_lost`` entries in the tenant they name (in the system log, tenant ``0…0``, when they
        name none). A journal is removed once all of it is in the log; raises (leaving it for a later
        attempt) if the database cannot take it.
        """
        if self.journal_dir is None:
            return 0
        appended = 0
        claimed = orphans.claim(self.journal_dir)
        try:
            for orphan in claimed:
                appended += await self._replay_journal(orphan)
                orphan.remove()
        finally:
            # Those not replayed (the database failed) stay for a later attempt, by this process or another.
            for orphan in claimed:
                orphan.release()
        return appended

    async def _replay_journal(self, orphan: orphans.Orphan) -> int:
        events: list[NewEvent] = []
        decisions: dict[uuid.UUID, Bucket] = {}
        dropped: dict[uuid.UUID, Bucket] = {}
        losses: list[NewEvent] = []
        for path in orphan.segments():
            contents = orphans.read(path)
            events.extend(contents.events)
            # A bucket's records may span segments: counted together, as the live process counted them.
            for into, found in ((decisions, contents.decisions), (dropped, contents.dropped)):
                for bucket_id, bucket in found.items():
                    into.setdefault(bucket_id, Bucket(bucket.tenant_id, bucket.label, event_id=bucket_id))
                    into[bucket_id].counts.update(bucket.counts)
            losses.extend(loss_event(orphan.owner, loss) for loss in contents.losses)
        events.extend(aggregated_event(bucket) for bucket in decisions.values())
        events.extend(dropped_event(bucket) for bucket in dropped.values())
        events.extend(losses)
        appended = await self._replay(events, {"journal": orphan.owner})
        self.tallies.lost += sum(int(event.data["count"]) for event in losses)
        log.warning(
            "audit_journal_replayed",
            process=orphan.owner,
            records=len(events),
            appended=appended,
            losses=len(losses),
        )
        return appended

    async def _replay(self, events: Sequence[NewEvent], origin: dict[str, str]) -> int:
        """Append those of ``events`` (left by an earlier process) the log does not hold yet, in order per
        tenant, then record ``audit.events_replayed`` (with ``origin``) in each tenant's log; returns how
        many were appended. Raises on an outage, leaving the rest for another attempt."""
        by_tenant: dict[uuid.UUID, list[NewEvent]] = {}
        for event in events:
            by_tenant.setdefault(event.tenant_id, []).append(event)
        epoch = await self.writer.appender.flush_wal()
        appended = 0
        for tenant_id, group in by_tenant.items():
            present = await self.writer.present(tenant_id, [event.event_id for event in group])
            fresh = [event for event in group if event.event_id not in present]
            written: set[uuid.UUID] = set()
            for start in range(0, len(fresh), self.writer.batch_size):
                outage = await self.writer.append_isolating(
                    tenant_id, fresh[start : start + self.writer.batch_size], written
                )
                if outage is not None:
                    raise outage
            replayed = replayed_event(tenant_id, len(fresh), len(group) - len(fresh), origin)
            await self.writer.append_now(replayed)
            appended += len(fresh)
        if await self.writer.appender.flush_wal() != epoch:
            # Appended without waiting for the WAL, and the server restarted since: some may be gone. The
            # source is kept, and replayed again (what is there is skipped) by a later attempt.
            raise RuntimeError("the database restarted during the replay")
        self.tallies.replayed += appended
        return appended
