"""kill switch: signed TERMINATE / PAUSE / RESUME commands

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aigos.server.db import rls
from aigos.server.db.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kill_switch_commands",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("root_command_id", sa.Uuid(), nullable=False),
        sa.Column("command", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("cascade", sa.Boolean(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("acknowledged_at", UTCDateTime(), nullable=True),
        sa.Column("ack_outcome", sa.String(length=20), nullable=True),
        sa.Column("ack_detail", sa.Text(), nullable=True),
        sa.Column("issued_by", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_kill_switch_commands_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_kill_switch_commands_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kill_switch_commands")),
        sa.UniqueConstraint("agent_id", "sequence", name="uq_kill_switch_commands_agent_id_sequence"),
    )
    op.create_index(
        "ix_kill_switch_commands_tenant_id_issued_at", "kill_switch_commands", ["tenant_id", "issued_at"]
    )
    op.create_index("ix_kill_switch_commands_root_command_id", "kill_switch_commands", ["root_command_id"])
    if not rls.is_postgres():
        return
    rls.grant("kill_switch_commands", "SELECT, INSERT, UPDATE, DELETE")
    rls.isolate_by_tenant("kill_switch_commands")


def downgrade() -> None:
    op.drop_table("kill_switch_commands")
