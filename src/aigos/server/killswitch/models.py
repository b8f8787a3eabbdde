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
