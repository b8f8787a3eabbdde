"""Tables of the event log. All are tenant-owned and under row-level security on PostgreSQL.

``audit_events`` is append-only: the application role may only INSERT and SELECT, and triggers refuse
UPDATE and DELETE on both databases. On PostgreSQL it is partitioned by day on ``recorded_at`` so
retention drops whole partitions.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aigos.server.db.base import Base
from aigos.server.db.types import JSONDocument, UTCDateTime


class AuditEvent(Base):
    """One entry of a tenant's log (the seed's GovernanceEvent plus actor, source, outcome, request id)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_tenant_id_event_id", "tenant_id", "event_id"),
        Index("ix_audit_events_tenant_id_recorded_at", "tenant_id", "recorded_at"),
        Index("ix_audit_events_tenant_id_event_type_seq", "tenant_id", "event_type", "seq"),
        Index("ix_audit_events_tenant_id_agent_id_seq", "tenant_id", "agent_id", "seq"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    event_type: Mapped[str] = mapped_column(String(100))
    agent_id: Mapped[str | None] = mapped_column(String(255))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(10))
    outcome: Mapped[str | None] = mapped_column(String(20))
    request_id: Mapped[str | None] = mapped_column(String(128))
    trace_id: Mapped[str | None] = mapped_column(String(64))
    span_id: Mapped[str | None] = mapped_column(String(32))
    #: Canonical JSON text, stored as written so the hash is recomputed over exactly these bytes' value.
    data: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The newest entry of each tenant's log and the Merkle compact range through it.

    Appenders lock this row, so concurrent processes produce one gap-free sequence per tenant.
    """

    __tablename__ = "audit_heads"

    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    compact_range: Mapped[dict[str, Any]] = mapped_column(JSONDocument)


class AuditCheckpoint(Base):
    """A signed tree head: the log's Merkle root and chain head at ``tree_size``."""

    __tablename__ = "audit_checkpoints"

    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    root_hash: Mapped[str] = mapped_column(String(64))
    head_hash: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(128))
    compact_range: Mapped[dict[str, Any]] = mapped_column(JSONDocument)


class AuditAnchor(Base):
    """What retention pruned from a tenant's log: its last entry and compact range, so the rest verifies."""

    __tablename__ = "audit_anchors"

    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    compact_range: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    pruned_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditPruneGuard(Base):
    """On SQLite, a row here (inside the pruning transaction only) lets retention delete old entries."""

    __tablename__ = "audit_prune_guard"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
