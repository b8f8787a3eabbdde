"""aigrc: asset cards, each at its current version, and every version saved; the webhook's cursor and dead
letters

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aigos.server.db import rls
from aigos.server.db.types import JSONDocument, UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "asset_cards",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("card_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("risk_level", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("card_version", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=71), nullable=False),
        sa.Column("document", JSONDocument, nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("golden_thread", JSONDocument, nullable=True),
        sa.Column("policy_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_asset_cards_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_asset_cards")),
        sa.UniqueConstraint("tenant_id", "card_id", name="uq_asset_cards_tenant_id_card_id"),
    )
    op.create_index("ix_asset_cards_tenant_id_updated_at", "asset_cards", ["tenant_id", "updated_at"])
    op.create_table(
        "asset_card_versions",
        sa.Column("asset_card_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("content_hash", sa.String(length=71), nullable=False),
        sa.Column("document", JSONDocument, nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("changed_by", sa.String(length=255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_asset_card_versions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("asset_card_id", "version", name=op.f("pk_asset_card_versions")),
    )
    op.create_table(
        "aigrc_webhook_cursors",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_aigrc_webhook_cursors_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_aigrc_webhook_cursors")),
    )
    op.create_table(
        "aigrc_dead_letters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("envelope_id", sa.String(length=40), nullable=False),
        sa.Column("envelope", JSONDocument, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_aigrc_dead_letters_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aigrc_dead_letters")),
    )
    op.create_index(
        "ix_aigrc_dead_letters_tenant_id_created_at", "aigrc_dead_letters", ["tenant_id", "created_at"]
    )
    if not rls.is_postgres():
        return
    rls.grant("aigrc_webhook_cursors", "SELECT, INSERT, UPDATE")
    rls.isolate_by_tenant("aigrc_webhook_cursors")
    rls.grant("aigrc_dead_letters", "SELECT, INSERT")
    rls.isolate_by_tenant("aigrc_dead_letters")
    rls.grant("asset_cards", "SELECT, INSERT, UPDATE")
    rls.isolate_by_tenant("asset_cards")
    # Versions are append-only: the application may add them, never change or remove one.
    rls.grant("asset_card_versions", "SELECT, INSERT")
    rls.isolate_by_tenant("asset_card_versions")


def downgrade() -> None:
    op.drop_index("ix_aigrc_dead_letters_tenant_id_created_at", table_name="aigrc_dead_letters")
    op.drop_table("aigrc_dead_letters")
    op.drop_table("aigrc_webhook_cursors")
    op.drop_table("asset_card_versions")
    op.drop_index("ix_asset_cards_tenant_id_updated_at", table_name="asset_cards")
    op.drop_table("asset_cards")
