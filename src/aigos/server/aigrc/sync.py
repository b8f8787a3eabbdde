"""Asset cards kept in step with an AIGRC-compatible HTTP source (``AIGRC_API_URL``, ``AIGRC_API_KEY``).

``GET <AIGRC_API_URL>/asset-cards`` (bearer ``AIGRC_API_KEY``) answers the source's cards as JSON: an array
of cards, or an object holding one under ``data`` or ``cards``. Each card is held to the schema on its own
and saved as an upload is (``source`` ``sync``, with what follows a save: ``lifecycle``): unchanged cards
change nothing, a refused card is named in
the result and the others are still saved. A source that fails (unreachable, an error, a body that is not
what it should be) changes nothing: the cards saved before stay, the last good copy. Every run, good or
failed, is recorded on the tenant's log as ``aigrc.synced`` and kept as ``last`` for ``GET /v1/aigrc/sync``.

The source is reached only through ``aigos.server.outbound``: its host alone is allowed, private and
link-local addresses refused unless ``AIGOS_AIGRC_ALLOW_PRIVATE``, the body bounded, redirects checked.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from aigos.core import assetcard
from aigos.server.aigrc import lifecycle, service
from aigos.server.audit.events import NewEvent
from aigos.server.audit.log import EventLog
from aigos.server.background import cancel
from aigos.server.db import Database
from aigos.server.db.outage import DatabaseUnavailable
from aigos.server.errors import AigosError
from aigos.server.identity.state import IdentityState
from aigos.server.outbound import Outbound, OutboundRefused, policy_from_settings
from aigos.server.policy.state import PolicyState
from aigos.server.tenancy import tenants
from aigos.server.tenancy.plans import plan_of

log = structlog.get_logger("aigos.aigrc")

#: The source's answer, at most: a few thousand cards.
MAX_SOURCE_BYTES = 16 * 1024 * 1024
#: Cards one run saves, at most (the plans allow at most 5,000 per tenant).
MAX_CARDS = 5_000


@dataclass
class SyncResult:
    """What one run did."""

    outcome: str  # "success" or "failure"
    started_at: str
    fetched: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)
    detail: str | None = None

    def as_event_data(self) -> dict[str, Any]:
        """The result as the log records it (the first 20 refusals: a source of junk must not flood it)."""
        data = asdict(self)
        data["refused_count"] = len(self.refused)
        data["refused"] = self.refused[:20]
        return data


class CardSync:
    """Syncs the configured tenant's cards from the source: every ``interval`` seconds and on demand."""

    def __init__(
        self,
        database: Database,
        events: EventLog,
        identity: IdentityState,
        policies: PolicyState,
        tenant_id: uuid.UUID,
        url: str,
        api_key: str | None,
        *,
        interval: float,
        allow_private: bool = False,
        allow_http: bool = False,
        outbound: Outbound | None = None,
    ) -> None:
        self.database = database
        self.events = events
        self.identity = identity
        self.policies = policies
        self.tenant_id = tenant_id
        self.endpoint = url.rstrip("/") + "/asset-cards"
        self.interval = interval
        policy = policy_from_settings(url, allow_private=allow_private, allow_http=allow_http)
        self._outbound = outbound or Outbound(replace(policy, max_bytes=MAX_SOURCE_BYTES))
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: The last run's result, on this process.
        self.last: SyncResult | None = None

    def start(self) -> None:
        """Sync now and then every ``interval`` seconds (not at all on a timer if it is 0)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="aigrc-sync")

    async def stop(self) -> None:
        """Stop the timer (a run in progress is cancelled: it saves card by card) and close the client."""
        await cancel(self._task)
        self._task = None
        await self._outbound.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run()
            except Exception:  # a run records its own failures; this is a bug's last line of defence
                log.exception("aigrc_sync_crashed")
            if self.interval <= 0:
                return
            await asyncio.sleep(self.interval)

    async def run(self) -> SyncResult:
        """Fetch the source's cards and save each; one run at a time on this process."""
        async with self._lock:
            result = SyncResult("success", _now())
            try:
                cards = await self._fetch()
            except _SourceFailed as failed:
                result.outcome, result.detail = "failure", failed.detail
                log.warning("aigrc_sync_failed", detail=failed.detail)
            else:
                result.fetched = len(cards)
                try:
                    await self._save(cards, result)
                except DatabaseUnavailable as down:
                    # What was saved before stays; the rest waits for the next run.
                    result.outcome, result.detail = "failure", f"the database is unavailable: {down.detail}"
            await self._record(result)
            self.last = result
            return result

    async def _fetch(self) -> list[Any]:
        try:
            response = await self._outbound.request("GET", self.endpoint, headers=self._headers)
        except OutboundRefused as refused:
            raise _SourceFailed(f"{refused.code}: {refused.detail}") from None
        if response.status != 200:
            raise _SourceFailed(f"the source answered HTTP {response.status}")
        try:
            # Off the event loop: the answer may be up to MAX_SOURCE_BYTES.
            body = await asyncio.to_thread(orjson.loads, response.body)
        except orjson.JSONDecodeError:
            raise _SourceFailed("the source's answer is not JSON") from None
        cards = body.get("data", body.get("cards")) if isinstance(body, dict) else body
        if not isinstance(cards, list):
            raise _SourceFailed("the source's answer holds no list of cards (an array, or `data`/`cards`)")
        if len(cards) > MAX_CARDS:
            raise _SourceFailed(f"the source lists {len(cards):,} cards, more than {MAX_CARDS:,}")
        return cards

    async def _save(self, cards: list[Any], result: SyncResult) -> None:
        async with self.database.session(self.tenant_id) as session:
            plan = plan_of(await tenants.plan_tier_of(session, self.tenant_id))
        for index, document in enumerate(cards):
            try:
                card = await asyncio.to_thread(assetcard.validate, document)
            except assetcard.CardInvalid as invalid:
                errors = [{"pointer": e.pointer, "detail": e.detail} for e in invalid.errors[:10]]
                card_id = document.get("id") if isinstance(document, dict) else None
                result.refused.append(
                    {"index": index, "id": str(card_id)[:40] if card_id else None, "errors": errors}
                )
                continue
            try:
                async with self.database.session(self.tenant_id) as session:
                    saved = await service.save(
                        session,
                        self.events,
                        self.tenant_id,
                        plan,
                        card,
                        source="sync",
                        recorded_as=self._event,
                        changed_by="aigrc-sync",
                    )
                    await lifecycle.after_save(
                        session, self.events, self.identity, self.policies, saved, card, plan, self._event
                    )
            except DatabaseUnavailable:
                raise
            except AigosError as refused:  # the plan's limits, say: this card alone, the others go on
                result.refused.append(
                    {"index": index, "id": card.id, "errors": [{"pointer": "", "detail": refused.detail}]}
                )
                continue
            setattr(result, saved.change, getattr(result, saved.change) + 1)

    async def _record(self, result: SyncResult) -> None:
        event = self._event("aigrc.synced", result.as_event_data(), outcome=result.outcome)
        try:
            async with self.database.session(self.tenant_id) as session:
                await self.events.record(event, session)
        except Exception:
            # The database is what failed: the result stays in ``last`` and the log line.
            log.exception("aigrc_sync_not_recorded", outcome=result.outcome)

    def _event(self, event_type: str, data: dict[str, Any], outcome: str = "success") -> NewEvent:
        return NewEvent(
            tenant_id=self.tenant_id,
            event_type=event_type,
            actor_type="system",
            actor_id="aigrc-sync",
            data=data,
            outcome=outcome,
        )


class _SourceFailed(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
