"""Tables of the kill-switch context."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aigos.server.db.base import Base
from aigos.server.db.types import UTCDateTime


class KillSwitchCommand(Base):
    """One signed command for one agent; a cascade or tenant-wide trigger makes one per agent.

    ``sequence`` grows by one per agent (unique with the agent), so agents can detect replays and gaps.
    """

    __tablename__ = "kill_switch_commands"
    __table_args__ = (
        UniqueConstraint("agent_id", "sequence", name="uq_kill_switch_commands_agent_id_sequence"),
        Index("ix_kill_switch_commands_tenant_id_issued_at", "tenant_id", "issued_at"),
        Index("ix_kill_switch_commands_root_command_id", "root_command_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    agent_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("agents.id", ondelete="CASCADE"))
    root_command_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    command: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(Text)
    cascade: Mapped[bool] = mapped_column(Boolean)
    sequence: Mapped[int] = mapped_column(Integer)
    nonce: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    ack_outcome: Mapped[str | None] = mapped_column(String(20), default=None)
    ack_detail: Mapped[str | None] = mapped_column(Text, default=None)
    issued_by: Mapped[str | None] = mapped_column(String(255), default=None)


class FleetCommand(Base):
    """One signed command for every agent of a scope: the tenant, or a root agent and its descendants.

    ``sequence`` grows by one per tenant across its fleet commands. ``active`` says whether the halt (a
    PAUSE or TERMINATE) is in force: a RESUME of the scope (or tenant-wide) lifts it, and a TERMINATE's
    halt ends once its bookkeeping has set every agent's status. ``bookkeeping_done_at`` is set by the
    transaction that moved the agents' statuses and wrote their delivery records; a replica that finds it
    unset at start (its bookkeeper crashed) does that work.
    """

    __tablename__ = "kill_switch_fleet_commands"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sequence", name="uq_kill_switch_fleet_commands_tenant_id_sequence"),
        Index("ix_kill_switch_fleet_commands_tenant_id_issued_at", "tenant_id", "issued_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    scope_kind: Mapped[str] = mapped_column(String(10))
    #: The lineage's root (None tenant-wide); not a foreign key: the command outlives nothing it names.
    root_agent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    command: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(Text)
    sequence: Mapped[int] = mapped_column(Integer)
    nonce: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    issued_by: Mapped[str | None] = mapped_column(String(255), default=None)
    #: The issuer's principal kind (``api_key``, ``user``, ``platform``), for the bookkeeping's events.
    issuer_kind: Mapped[str] = mapped_column(String(20))
    active: Mapped[bool] = mapped_column(Boolean)
    #: The fleet command that lifted this halt.
    lifted_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    bookkeeping_done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: How many agents the bookkeeping gave the status (or found in it), and how many it skipped.
    targeted: Mapped[int | None] = mapped_column(Integer, default=None)
    skipped: Mapped[int | None] = mapped_column(Integer, default=None)


class FleetDelivery(Base):
    """One agent's delivery and acknowledgement of a fleet command.

    Written by the bookkeeping for every agent it reached, and by the delivery recorder or the agent's
    acknowledgement, whichever comes first (each inserts the row if it is not there yet).
    """

    __tablename__ = "kill_switch_fleet_deliveries"

    #: Not a foreign key (its name would pass PostgreSQL's identifier limit); both go with the tenant.
    fleet_command_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    agent_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    ack_outcome: Mapped[str | None] = mapped_column(String(20), default=None)
    ack_detail: Mapped[str | None] = mapped_column(Text, default=None)
