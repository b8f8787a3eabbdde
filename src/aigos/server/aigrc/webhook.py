"""The signed webhook back to AIGRC: the runtime events of a tenant's card-bound agents, as they are logged.

The event log is the outbox. The webhook reads the tenant's log after its cursor (``aigrc_webhook_cursors``),
a batch at a time (entries about agents registered against an asset card: registrations, decisions,
violations, kill-switch commands), and POSTs them as a JSON array of EVT-001 envelopes to
``AIGOS_AIGRC_WEBHOOK_URL``, signed: ``X-AIGOS-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>." + body>`` under ``AIGOS_AIGRC_WEBHOOK_SECRET``. A 2xx moves the cursor past the batch. Anything else
is retried with a growing pause, ``attempts`` times at most; then the batch's envelopes are kept as dead
letters (``GET /v1/aigrc/webhook/dead-letters``), the loss is recorded (``aigrc.webhook_dead_lettered``)
and the cursor moves on: one batch never holds back the rest. Delivery is at least once (two replicas may
both send a batch before either moves the cursor): receivers deduplicate by the envelope's ``id``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import orjson
import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from aigos.server.aigrc import export, service
from aigos.server.aigrc.models import WebhookCursor, WebhookDeadLetter
from aigos.server.audit import service as audit
from aigos.server.audit.events import NewEvent
from aigos.server.audit.log import EventLog
from aigos.server.background import cancel
from aigos.server.db import Database
from aigos.server.db.types import utcnow
from aigos.server.identity import agents
from aigos.server.outbound import Outbound, OutboundRefused, policy_from_settings

log = structlog.get_logger("aigos.aigrc")

SIGNATURE_HEADER = "X-AIGOS-Signature"
#: Refusals no retry can change.
FORBIDDEN = frozenset({"HOST_NOT_ALLOWED", "ADDRESS_NOT_ALLOWED", "SCHEME_NOT_ALLOWED", "BAD_URL"})


def signature(secret: bytes, body: bytes, at: int) -> str:
    """The ``X-AIGOS-Signature`` value of ``body`` sent at unix time ``at``."""
    digest = hmac.new(secret, f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


@dataclass(frozen=True, slots=True)
class Round:
    """What one round did: envelopes delivered, set aside as dead letters, and the cursor after it."""

    delivered: int
    dead: int
    cursor: int


class Webhook:
    """Delivers the tenant's card-bound runtime events to AIGRC (see the module)."""

    def __init__(
        self,
        database: Database,
        events: EventLog,
        tenant_id: uuid.UUID,
        url: str,
        secret: str,
        *,
        interval: float = 2.0,
        batch: int = 100,
        attempts: int = 5,
        backoff: tuple[float, float] = (0.5, 8.0),
        allow_private: bool = False,
        outbound: Outbound | None = None,
    ) -> None:
        self.database = database
        self.events = events
        self.tenant_id = tenant_id
        self.url = url
        self.interval = interval
        self.batch = batch
        self.attempts = attempts
        self.backoff = backoff
        self._secret = secret.encode()
        policy = policy_from_settings(url, allow_private=allow_private, allow_http=allow_private)
        self._outbound = outbound or Outbound(replace(policy, max_bytes=64 * 1024, max_redirects=0))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Deliver in the background from now on."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="aigrc-webhook")

    async def stop(self) -> None:
        """Stop delivering (a batch in flight is sent again by the next start: the cursor did not move)."""
        await cancel(self._task)
        self._task = None
        await self._outbound.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                done = await self.deliver()
            except Exception:  # the database is down, say: the cursor did not move; try again later
                log.exception("aigrc_webhook_round_failed")
                done = Round(0, 0, -1)
            if done.delivered + done.dead < self.batch:
                await asyncio.sleep(self.interval)

    async def deliver(self) -> Round:
        """One round: the next batch after the cursor, delivered or dead-lettered."""
        async with self.database.session(self.tenant_id) as session:
            stmt = select(WebhookCursor.seq).where(WebhookCursor.tenant_id == self.tenant_id)
            start = await session.scalar(stmt) or 0
            cards_of = await agents.cards_of_agents(session, self.tenant_id)
            entries = await audit.about_agents(
                session,
                self.tenant_id,
                export.EXPORTED,
                sorted(cards_of),
                after=start,
                limit=self.batch,
            )
            records = await service.by_id(session, self.tenant_id, set(cards_of.values()))
        if not entries:
            return Round(0, 0, start)
        sent = [
            (entry["seq"], export.from_entry(self.tenant_id, records[cards_of[entry["agent_id"]]], entry))
            for entry in entries
            if cards_of.get(entry["agent_id"]) in records
        ]
        envelopes = [envelope for _, envelope in sent]
        last = entries[-1]["seq"]
        error = await self._post(envelopes) if envelopes else None
        async with self.database.session(self.tenant_id) as session:
            if error is not None:
                for seq, envelope in sent:
                    session.add(
                        WebhookDeadLetter(
                            tenant_id=self.tenant_id,
                            seq=seq,
                            envelope_id=envelope["id"],
                            envelope=envelope,
                            attempts=self.attempts,
                            error=error,
                        )
                    )
                data = {
                    "count": len(envelopes),
                    "first_seq": entries[0]["seq"],
                    "last_seq": last,
                    "error": error,
                }
                await self.events.record(self._event("aigrc.webhook_dead_lettered", data), session)
            moved = await _advance(session, self.tenant_id, start, last)
        if not moved:
            log.info("aigrc_webhook_cursor_moved_elsewhere", seq=last)
        if error is not None:
            log.warning("aigrc_webhook_dead_lettered", count=len(envelopes), error=error)
            return Round(0, len(envelopes), last)
        return Round(len(envelopes), 0, last)

    async def _post(self, envelopes: list[dict[str, Any]]) -> str | None:
        """Send the batch, retrying; ``None`` once the receiver took it, else why it never did."""
        body = orjson.dumps(envelopes)
        pause, longest = self.backoff
        error = "not sent"
        for attempt in range(self.attempts):
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature(self._secret, body, int(time.time())),
            }
            try:
                response = await self._outbound.request("POST", self.url, headers=headers, content=body)
            except OutboundRefused as refused:
                error = f"{refused.code}: {refused.detail}"
                if refused.code in (
                    "HOST_NOT_ALLOWED",
                    "ADDRESS_NOT_ALLOWED",
                    "SCHEME_NOT_ALLOWED",
                    "BAD_URL",
                ):
                    return error  # no retry can make a forbidden address allowed
            else:
                if 200 <= response.status < 300:
                    return None
                error = f"the receiver answered HTTP {response.status}"
            if attempt + 1 < self.attempts:
                await asyncio.sleep(min(pause * 2**attempt, longest))
        return error

    def _event(self, event_type: str, data: dict[str, Any]) -> NewEvent:
        return NewEvent(
            tenant_id=self.tenant_id,
            event_type=event_type,
            actor_type="system",
            actor_id="aigrc-webhook",
            data=data,
            outcome="failure",
        )


async def _advance(session: Any, tenant_id: uuid.UUID, start: int, last: int) -> bool:
    """Move the cursor from ``start`` to ``last``; False if another replica moved it first."""
    if start == 0 and await session.get(WebhookCursor, tenant_id) is None:
        try:
            async with session.begin_nested():
                session.add(WebhookCursor(tenant_id=tenant_id, seq=last, updated_at=utcnow()))
            return True
        except IntegrityError:
            return False
    moved = await session.execute(
        update(WebhookCursor)
        .where(WebhookCursor.tenant_id == tenant_id, WebhookCursor.seq == start)
        .values(seq=last, updated_at=utcnow())
    )
    return bool(moved.rowcount)
