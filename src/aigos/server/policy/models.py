"""Tables of the policy context.

A policy's current form lives in ``policies``, with its document's size and rule count (the plan's totals
sum those columns, never the documents); every version ever saved (created, changed, deleted) in the
append-only ``policy_versions``. ``policy_sets`` holds one counter per tenant, raised by every change, which
names the compiled snapshot each replica holds. ``budget_spend`` persists what budgets have spent.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aigos.server.db.base import Base
from aigos.server.db.types import JSONDocument, UTCDateTime, utcnow


class Policy(Base):
    """A tenant's policy as it stands (``deleted_at`` set once deleted: its versions stay readable)."""

    __tablename__ = "policies"
    __table_args__ = (Index("ix_policies_tenant_id_updated_at", "tenant_id", "updated_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    target_kind: Mapped[str] = mapped_column(String(20), default="tenant")
    target_agent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    mode: Mapped[str] = mapped_column(String(20), default="enforce")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    #: The document's size as limits count it (``aigos.server.policy.limits.document_size``).
    document_bytes: Mapped[int] = mapped_column(Integer, server_default="0")
    rule_count: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class PolicyVersion(Base):
    """One saved version of a policy: never changed, never deleted."""

    __tablename__ = "policy_versions"

    policy_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    change: Mapped[str] = mapped_column(String(20))
    document: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    changed_by: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PolicySetVersion(Base):
    """The version of a tenant's whole policy set: raised by every change to any of its policies."""

    __tablename__ = "policy_sets"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BudgetSpend(Base):
    """What one budget counter has spent (``key`` as in ``aigos.core.policy.Budget.key``)."""

    __tablename__ = "budget_spend"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    spent: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
