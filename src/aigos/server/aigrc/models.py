"""Tables of the AIGRC context.

``asset_cards`` holds each card of a tenant as it stands, keyed by the card's own id (``aigrc-2025-…``),
with its content hash and where it came from; every version ever saved is in the append-only
``asset_card_versions``. A card is never deleted while agents may name it: a source that stops listing it
leaves the last good copy in place. ``aigrc_webhook_cursors`` and ``aigrc_dead_letters`` are the signed
webhook's progress through the log and what it could not deliver.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aigos.server.db.base import Base
from aigos.server.db.types import JSONDocument, UTCDateTime, utcnow


class AssetCardRecord(Base):
    """A tenant's asset card at its current version."""

    __tablename__ = "asset_cards"
    __table_args__ = (
        UniqueConstraint("tenant_id", "card_id", name="uq_asset_cards_tenant_id_card_id"),
        Index("ix_asset_cards_tenant_id_updated_at", "tenant_id", "updated_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    card_id: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    risk_level: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    #: The card's own ``version`` field, as its authors number it.
    card_version: Mapped[str] = mapped_column(String(64))
    #: How many times AIGOS saved a changed card under this id: 1, 2, ...
    version: Mapped[int] = mapped_column(Integer, default=1)
    content_hash: Mapped[str] = mapped_column(String(71))
    document: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    #: ``api``, ``directory`` (``aigos aigrc import``) or ``sync`` (the AIGRC source).
    source: Mapped[str] = mapped_column(String(20))
    #: The card's Golden Thread as verified when saved: hash, ticket_id, verified, form.
    golden_thread: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, default=None)
    #: The policy the card derives from its runtime constraints (``derived.py``), while it has one.
    policy_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AssetCardVersion(Base):
    """One saved version of a card: never changed, never deleted."""

    __tablename__ = "asset_card_versions"

    asset_card_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    content_hash: Mapped[str] = mapped_column(String(71))
    document: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    source: Mapped[str] = mapped_column(String(20))
    changed_by: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookCursor(Base):
    """How far the AIGRC webhook has delivered a tenant's log: the ``seq`` of the last entry it sent (or set
    aside as a dead letter). It only moves forward, once the receiver took the batch."""

    __tablename__ = "aigrc_webhook_cursors"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDeadLetter(Base):
    """An envelope the receiver would not take after every retry: kept, with why, never lost silently."""

    __tablename__ = "aigrc_dead_letters"
    __table_args__ = (Index("ix_aigrc_dead_letters_tenant_id_created_at", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    envelope_id: Mapped[str] = mapped_column(String(40))
    envelope: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
