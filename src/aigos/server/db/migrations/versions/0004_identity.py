"""identity: agents, agent credentials, signing keys, revoked tokens

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aigos.server.db import rls
from aigos.server.db.types import JSONDocument, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The token endpoint authenticates a client by its secret before any tenant is known.
FIND_CLIENT_SECRET = """
CREATE OR REPLACE FUNCTION aigos_find_client_secret(p_hash text)
RETURNS TABLE (credential_id uuid, tenant_id uuid, agent_id uuid, expires_at timestamptz, revoked_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT c.id, c.tenant_id, c.agent_id, c.expires_at, c.revoked_at
  FROM agent_credentials c WHERE c.kind = 'client_secret' AND c.secret_hash = p_hash
$$
"""
# private_key_jwt and token requests name the client (= agent id) before the tenant is known.
FIND_AGENT_TENANT = """
CREATE OR REPLACE FUNCTION aigos_find_agent_tenant(p_agent uuid) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT tenant_id FROM agents WHERE id = p_agent
$$
"""


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("agent_type", sa.String(length=50), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("deployment_env", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("capabilities", JSONDocument, nullable=False),
        sa.Column("asset_card_id", sa.String(length=100), nullable=True),
        sa.Column("golden_thread", JSONDocument, nullable=True),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("lineage_depth", sa.Integer(), nullable=False),
        sa.Column("metadata", JSONDocument, nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=True),
        sa.Column("last_auth_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_agents_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["parent_id"], ["agents.id"], name=op.f("fk_agents_parent_id_agents")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("tenant_id", "email", name="uq_agents_tenant_id_email"),
    )
    op.create_index("ix_agents_tenant_id_status", "agents", ["tenant_id", "status"])
    op.create_index("ix_agents_tenant_id_created_at", "agents", ["tenant_id", "created_at"])
    op.create_table(
        "agent_credentials",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("secret_prefix", sa.String(length=32), nullable=True),
        sa.Column("secret_hash", sa.String(length=64), nullable=True),
        sa.Column("public_jwk", JSONDocument, nullable=True),
        sa.Column("jwk_thumbprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("rotated_from", sa.Uuid(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_agent_credentials_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_agent_credentials_agent_id_agents"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_credentials")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_agent_credentials_secret_hash")),
    )
    op.create_index("ix_agent_credentials_tenant_id_agent_id", "agent_credentials", ["tenant_id", "agent_id"])
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("alg", sa.String(length=10), nullable=False),
        sa.Column("public_jwk", JSONDocument, nullable=False),
        sa.Column("private_key_encrypted", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
        sa.Column("publish_until", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_revoked_tokens_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_revoked_tokens")),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])
    if not rls.is_postgres():
        return
    rls.grant("signing_keys", "SELECT, INSERT, UPDATE")
    for table in ("agents", "agent_credentials", "revoked_tokens"):
        rls.grant(table, "SELECT, INSERT, UPDATE, DELETE")
        rls.isolate_by_tenant(table)
    for definition, signature in (
        (FIND_CLIENT_SECRET, "aigos_find_client_secret(text)"),
        (FIND_AGENT_TENANT, "aigos_find_agent_tenant(uuid)"),
    ):
        op.execute(definition)
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {rls.APP_ROLE}")


def downgrade() -> None:
    if rls.is_postgres():
        op.execute("DROP FUNCTION IF EXISTS aigos_find_client_secret(text)")
        op.execute("DROP FUNCTION IF EXISTS aigos_find_agent_tenant(uuid)")
    for table in ("revoked_tokens", "signing_keys", "agent_credentials", "agents"):
        op.drop_table(table)
