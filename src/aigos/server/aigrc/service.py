"""Saving and reading asset cards: one code path for every source (upload, directory import, sync).

A card is keyed by its own id within the tenant. Saving a card whose content hash is unchanged changes
nothing (an import or a sync can run as often as it likes); a changed card becomes a new version, kept
for good, and recorded on the tenant's log (``asset_card.created`` / ``asset_card.updated``).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import assetcard
from aigos.server.aigrc.models import AssetCardRecord, AssetCardVersion, WebhookCursor, WebhookDeadLetter
from aigos.server.aigrc.schemas import AssetCardOut, AssetCardVersionOut, GoldenThreadState
from aigos.server.audit.events import NewEvent
from aigos.server.audit.log import EventLog
from aigos.server.db.paging import paged
from aigos.server.db.types import utcnow
from aigos.server.errors import NotFound
from aigos.server.tenancy.locks import lock_tenant
from aigos.server.tenancy.plans import Plan, enforce_limit

Source = Literal["api", "directory", "sync"]
Change = Literal["created", "updated", "unchanged"]
#: Makes the event a save records: ``(event_type, data) -> NewEvent`` (``partial(by, principal)``).
Recorder = Callable[[str, dict[str, Any]], NewEvent]


@dataclass(frozen=True, slots=True)
class Saved:
    """A card after a save, and what the save changed."""

    record: AssetCardRecord
    change: Change


async def save(
    session: AsyncSession,
    events: EventLog,
    tenant_id: uuid.UUID,
    plan: Plan,
    card: assetcard.AssetCard,
    *,
    source: Source,
    recorded_as: Recorder,
    changed_by: str | None,
) -> Saved:
    """Save ``card`` in the tenant: new (within the plan's ``max_asset_cards``), changed, or unchanged."""
    # Serialised per tenant: two uploads of one new card must not both insert it, nor pass the plan limit.
    await lock_tenant(session, tenant_id)
    record = await find(session, tenant_id, card.id)
    content_hash = card.content_hash()
    if record is not None and record.content_hash == content_hash:
        return Saved(record, "unchanged")
    now = utcnow()
    if record is None:
        enforce_limit(plan, "asset_cards", await _count(session, tenant_id))
        record = AssetCardRecord(
            id=uuid.uuid4(), tenant_id=tenant_id, card_id=card.id, version=0, created_at=now
        )
        session.add(record)
    change: Change = "created" if record.version == 0 else "updated"
    record.name = card.name
    record.risk_level = card.risk_level
    record.status = card.status
    record.card_version = card.version
    record.version += 1
    record.content_hash = content_hash
    record.document = card.document
    record.source = source
    record.golden_thread = golden_thread_state(card)
    record.updated_at = now
    session.add(
        AssetCardVersion(
            asset_card_id=record.id,
            version=record.version,
            tenant_id=tenant_id,
            content_hash=content_hash,
            document=card.document,
            source=source,
            changed_by=changed_by,
            created_at=now,
        )
    )
    await session.flush()
    data = {
        "asset_card_id": card.id,
        "version": record.version,
        "content_hash": content_hash,
        "risk_level": card.risk_level,
        "status": card.status,
        "source": source,
    }
    await events.record(recorded_as(f"asset_card.{change}", data), session)
    return Saved(record, change)


#: Saved cards read back into ``AssetCard``, by content hash: every registration against a card reads it.
_READ: OrderedDict[str, assetcard.AssetCard] = OrderedDict()
_READ_MAX = 256


def card_of(record: AssetCardRecord) -> assetcard.AssetCard:
    """The saved card as an ``AssetCard`` (validated when it was saved; read once per content hash)."""
    card = _READ.get(record.content_hash)
    if card is None:
        card = _READ[record.content_hash] = assetcard.validate(record.document)
        if len(_READ) > _READ_MAX:
            _READ.popitem(last=False)
    else:
        _READ.move_to_end(record.content_hash)
    return card


def golden_thread_state(card: assetcard.AssetCard) -> dict[str, Any] | None:
    """The card's Golden Thread as verified now (stored with the card, shown with it)."""
    thread = card.golden_thread
    if thread is None:
        return None
    verification = assetcard.verify_golden_thread(card)
    return {
        "hash": thread.hash,
        "ticket_id": thread.ticket_id,
        "verified": bool(verification and verification.verified),
        "form": verification.form if verification else None,
    }


async def find(session: AsyncSession, tenant_id: uuid.UUID, card_id: str) -> AssetCardRecord | None:
    """The tenant's card ``card_id``, if it has one."""
    stmt = select(AssetCardRecord).where(
        AssetCardRecord.tenant_id == tenant_id, AssetCardRecord.card_id == card_id
    )
    return (await session.scalars(stmt)).one_or_none()


async def by_id(
    session: AsyncSession, tenant_id: uuid.UUID, card_ids: set[str]
) -> dict[str, AssetCardRecord]:
    """The tenant's cards among ``card_ids``, by id."""
    stmt = select(AssetCardRecord).where(
        AssetCardRecord.tenant_id == tenant_id, AssetCardRecord.card_id.in_(sorted(card_ids))
    )
    return {record.card_id: record for record in await session.scalars(stmt)}


async def get(session: AsyncSession, tenant_id: uuid.UUID, card_id: str) -> AssetCardRecord:
    """The tenant's card ``card_id``; 404 ``ASSET_CARD_NOT_FOUND`` when it has none."""
    record = await find(session, tenant_id, card_id)
    if record is None:
        raise NotFound(f"No asset card {card_id!r} in this tenant.", code="ASSET_CARD_NOT_FOUND")
    return record


async def page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    page: int,
    limit: int,
    risk_level: str | None = None,
    status: str | None = None,
) -> tuple[list[AssetCardRecord], int]:
    """The tenant's cards, most recently changed first."""
    stmt = select(AssetCardRecord).where(AssetCardRecord.tenant_id == tenant_id)
    if risk_level is not None:
        stmt = stmt.where(AssetCardRecord.risk_level == risk_level)
    if status is not None:
        stmt = stmt.where(AssetCardRecord.status == status)
    stmt = stmt.order_by(AssetCardRecord.updated_at.desc(), AssetCardRecord.card_id)
    return await paged(session, stmt, page, limit)


async def versions(session: AsyncSession, tenant_id: uuid.UUID, card_id: str) -> list[AssetCardVersionOut]:
    """Every saved version of the card, newest first."""
    record = await get(session, tenant_id, card_id)
    stmt = (
        select(AssetCardVersion)
        .where(AssetCardVersion.tenant_id == tenant_id, AssetCardVersion.asset_card_id == record.id)
        .order_by(AssetCardVersion.version.desc())
    )
    return [
        AssetCardVersionOut(
            id=record.card_id,
            version=row.version,
            content_hash=row.content_hash,
            source=row.source,
            changed_by=row.changed_by,
            created_at=row.created_at,
            document=row.document,
        )
        for row in await session.scalars(stmt)
    ]


async def _count(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    stmt = select(func.count()).select_from(AssetCardRecord).where(AssetCardRecord.tenant_id == tenant_id)
    return int(await session.scalar(stmt) or 0)


def to_out(record: AssetCardRecord) -> AssetCardOut:
    """The API's form of a saved card."""
    thread = record.golden_thread
    return AssetCardOut(
        id=record.card_id,
        name=record.name,
        risk_level=record.risk_level,
        status=record.status,
        card_version=record.card_version,
        version=record.version,
        content_hash=record.content_hash,
        source=record.source,
        golden_thread=GoldenThreadState.model_validate(thread) if thread else None,
        created_at=record.created_at,
        updated_at=record.updated_at,
        document=record.document,
    )


async def webhook_state(session: AsyncSession, tenant_id: uuid.UUID) -> tuple[int, int]:
    """The webhook's cursor and how many dead letters it left, for the tenant."""
    cursor = await session.scalar(select(WebhookCursor.seq).where(WebhookCursor.tenant_id == tenant_id))
    dead = await session.scalar(
        select(func.count()).select_from(WebhookDeadLetter).where(WebhookDeadLetter.tenant_id == tenant_id)
    )
    return int(cursor or 0), int(dead or 0)


async def dead_letters(
    session: AsyncSession, tenant_id: uuid.UUID, *, page: int, limit: int
) -> tuple[list[WebhookDeadLetter], int]:
    """The webhook's dead letters, newest first."""
    stmt = (
        select(WebhookDeadLetter)
        .where(WebhookDeadLetter.tenant_id == tenant_id)
        .order_by(WebhookDeadLetter.created_at.desc(), WebhookDeadLetter.seq.desc())
    )
    return await paged(session, stmt, page, limit)
