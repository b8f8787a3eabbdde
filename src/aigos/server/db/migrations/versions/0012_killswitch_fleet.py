"""kill switch: fleet commands (one signed command for a tenant or a lineage) and their per-agent records

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aigos.server.db import rls
from aigos.server.db.types import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kill_switch_fleet_commands",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("scope_kind", sa.String(length=10), nullable=False),
        sa.Column("root_agent_id", sa.Uuid(), nullable=True),
        sa.Column("command", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("issued_by", sa.String(length=255), nullable=True),
        sa.Column("issuer_kind", sa.String(length=20), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("lifted_by", sa.Uuid(), nullable=True),
        sa.Column("bookkeeping_done_at", UTCDateTime(), nullable=True),
        sa.Column("targeted", sa.Integer(), nullable=True),
        sa.Column("skipped", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_kill_switch_fleet_commands_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kill_switch_fleet_commands")),
        sa.UniqueConstraint("tenant_id", "sequence", name="uq_kill_switch_fleet_commands_tenant_id_sequence"),
    )
    op.create_index(
        "ix_kill_switch_fleet_commands_tenant_id_issued_at",
        "kill_switch_fleet_commands",
        ["tenant_id", "issued_at"],
    )
    op.create_table(
        "kill_switch_fleet_deliveries",
        sa.Column("fleet_command_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("acknowledged_at", UTCDateTime(), nullable=True),
        sa.Column("ack_outcome", sa.String(length=20), nullable=True),
        sa.Column("ack_detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_kill_switch_fleet_deliveries_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("fleet_command_id", "agent_id", name=op.f("pk_kill_switch_fleet_deliveries")),
    )
    if not rls.is_postgres():
        return
    for table in ("kill_switch_fleet_commands", "kill_switch_fleet_deliveries"):
        rls.grant(table, "SELECT, INSERT, UPDATE, DELETE")
        rls.isolate_by_tenant(table)


def downgrade() -> None:
    op.drop_table("kill_switch_fleet_deliveries")
    op.drop_table("kill_switch_fleet_commands")
