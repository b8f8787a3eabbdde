"""policy: policies, their versions, per-tenant set versions, budget spend

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aigos.server.db import rls
from aigos.server.db.types import JSONDocument, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Versions are history: like the event log, the application may add to them but never rewrite them.
VERSIONS_APPEND_ONLY_SQLITE = """
CREATE TRIGGER policy_versions_no_{op} BEFORE {OP} ON policy_versions
BEGIN SELECT RAISE(ABORT, 'policy_versions is append-only'); END
"""
VERSIONS_APPEND_ONLY_PG = (
    """
CREATE OR REPLACE FUNCTION aigos_policy_versions_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'policy_versions is append-only'; END $$
""",
    """
CREATE TRIGGER policy_versions_append_only BEFORE UPDATE OR DELETE ON policy_versions
FOR EACH ROW EXECUTE FUNCTION aigos_policy_versions_append_only()
""",
)


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("target_kind", sa.String(length=20), nullable=False),
        sa.Column("target_agent_id", sa.Uuid(), nullable=True),
        sa.Column("mode", sa.String(length=20), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", JSONDocument, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_policies_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
    )
    op.create_index("ix_policies_tenant_id_updated_at", "policies", ["tenant_id", "updated_at"])
    op.create_table(
        "policy_versions",
        sa.Column("policy_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("change", sa.String(length=20), nullable=False),
        sa.Column("document", JSONDocument, nullable=False),
        sa.Column("changed_by", sa.String(length=255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_policy_versions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("policy_id", "version", name=op.f("pk_policy_versions")),
    )
    op.create_table(
        "policy_sets",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_policy_sets_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_policy_sets")),
    )
    op.create_table(
        "budget_spend",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("spent", sa.Float(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_budget_spend_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_budget_spend")),
    )
    if not rls.is_postgres():
        for name in ("update", "delete"):
            op.execute(VERSIONS_APPEND_ONLY_SQLITE.format(op=name, OP=name.upper()))
        return
    for statement in VERSIONS_APPEND_ONLY_PG:
        op.execute(statement)
    rls.grant("policy_versions", "SELECT, INSERT")
    rls.isolate_by_tenant("policy_versions")
    for table in ("policies", "policy_sets", "budget_spend"):
        rls.grant(table, "SELECT, INSERT, UPDATE")
        rls.isolate_by_tenant(table)


def downgrade() -> None:
    for table in ("budget_spend", "policy_sets", "policy_versions", "policies"):
        op.drop_table(table)
    if rls.is_postgres():
        op.execute("DROP FUNCTION IF EXISTS aigos_policy_versions_append_only()")
