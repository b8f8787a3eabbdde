"""Following the event log live (``GET /v1/telemetry/events/stream``): Server-Sent Events, resumable.

A follower polls the tenant's log every ``POLL_SECONDS`` for what is new since its last poll (the head
read first, so a poll reads only entries it has not read yet, whatever its filters match: the cost of a
poll is linear in what was appended since, never in the log). Each matching entry is one SSE frame whose
``id`` is its ``seq``: a client that reconnects with ``Last-Event-ID`` continues after it. Entries reach
the log through the batch writer, so a follower sees one within about ``POLL_SECONDS`` plus the
writer's flush interval. No database connection is held between polls. ``MAX_PER_TENANT`` followers per
tenant and process at most; each ends when the server is told to stop (its client reconnects).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import orjson
import structlog

from aigos.server.audit import service as audit
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.db.outage import DatabaseUnavailable
from aigos.server.errors import RateLimited
from aigos.server.shutdown import Shutdown

log = structlog.get_logger("aigos.telemetry.follow")

POLL_SECONDS = 0.5
#: Entries read per poll at most (a follower far behind catches up poll after poll, without pausing).
BATCH = 500
KEEPALIVE_SECONDS = 15.0
MAX_PER_TENANT = 10
KEEPALIVE = b": keep-alive\n\n"

_following: Counter[uuid.UUID] = Counter()


def frame(seq: int, event_type: str, entry: dict[str, object]) -> bytes:
    """One entry as an SSE frame."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event_type.encode(), orjson.dumps(entry))


class Follower:
    """One client following one tenant's log from ``after`` (the ``seq`` it has seen last)."""

    def __init__(
        self,
        database: Database,
        shutdown: Shutdown,
        tenant_id: uuid.UUID,
        filters: audit.EventFilter,
        after: int | None,
    ) -> None:
        if _following[tenant_id] >= MAX_PER_TENANT:
            raise RateLimited(
                f"At most {MAX_PER_TENANT} telemetry streams per tenant on one server; close one first.",
                code="TOO_MANY_STREAMS",
                headers={"Retry-After": "5"},
            )
        self.database = database
        self.shutdown = shutdown
        self.tenant_id = tenant_id
        self.filters = filters
        self.after = after

    async def start(self) -> None:
        """Without a position to resume from, begin at the log's head (what is appended from now on)."""
        if self.after is None:
            async with self.database.session() as session:
                await set_tenant(session, self.tenant_id)
                self.after = await audit.head(session, self.tenant_id)

    async def frames(self) -> AsyncIterator[bytes]:
        """The stream's frames, until the server stops (or the client goes: the server cancels this)."""
        # Counted while it runs (a response never started never counts, so nothing is left behind).
        _following[self.tenant_id] += 1
        try:
            yield b": following\n\n"
            quiet_since = time.monotonic()
            while not self.shutdown.closing:
                try:
                    found = await self._poll()
                except DatabaseUnavailable:
                    # The headers went long ago: end the stream; the client reconnects with Last-Event-ID
                    # (and is answered 503 while the database is still away).
                    log.warning("telemetry_stream_database_unavailable", tenant_id=str(self.tenant_id))
                    return
                for entry in found:
                    yield frame(entry.seq, entry.event_type, entry.entry)
                if found:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                    yield KEEPALIVE
                    quiet_since = time.monotonic()
                if len(found) < BATCH:
                    await self.shutdown.pause(POLL_SECONDS)
        finally:
            _following[self.tenant_id] -= 1
            if _following[self.tenant_id] <= 0:
                del _following[self.tenant_id]

    async def _poll(self) -> list[audit.AuditEntryRow]:
        assert self.after is not None
        async with self.database.session() as session:
            await set_tenant(session, self.tenant_id)
            upto = await audit.head(session, self.tenant_id)
            found = await audit.following(
                session, self.tenant_id, self.filters, after=self.after, upto=upto, limit=BATCH
            )
        # Read up to the head, matched or not: the next poll starts past everything read here.
        self.after = found[-1].seq if len(found) == BATCH else upto
        return found
