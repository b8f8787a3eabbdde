"""tenancy: single-use invitations, owner sign-in, recovery keys, row-level security on platform tables

What the application role (``aigos_app``) can read without a tenant context, after this revision, and why:

- ``users``: no row. With a tenant set it sees the ``id``, ``email`` and ``created_at`` of that tenant's
  members only; the ``password_hash`` column is not granted at all (column privilege), so ``SELECT *`` fails
  and no query lists hashes. It may insert a user (signup, invitation) and set a password.
- A password hash is read only through ``aigos_member_password(email)``: one row, by exact address, and only
  for a member of the tenant the transaction is bound to (sign-in names its tenant; signup binds the new
  tenant). Verifying a password needs its hash, but never another tenant's users' hashes in bulk.
- ``aigos_find_user_id(email)``: the id of the user with that address, nothing else. Adding a member and
  signup need it to attach a membership without creating a second account.
- ``aigos_find_tenant(slug_or_id)``: a tenant's id, for sign-in, which names the tenant before any context.
- ``aigos_find_invitation(hash)`` / ``aigos_find_session(hash)``: the one invitation or session whose HMAC
  matches, as ``aigos_find_api_key`` does for API keys. Knowing the HMAC needs the secret and the pepper.
- ``platform_tokens``: no row and no SELECT privilege. ``aigos_find_platform_token(hash)`` returns the name
  of the live token with that HMAC; ``aigos_platform_token_named(name)`` whether the bootstrap token exists.
- ``signing_keys``: every row, deliberately: they are the platform's token-signing keys, not any tenant's;
  every replica must load them all to sign and to publish the JWKS. Private keys are AES-256-GCM encrypted
  with a key that lives only in the server's configuration, never in the database. The table is now under
  forced row-level security with one explicit policy for the server, and the app role cannot delete keys.
- Platform scope (``app.platform_scope``, set by the server's cross-tenant jobs and platform-admin
  requests): read-only, and no longer over credential tables. ``api_keys``, ``tenant_members``,
  ``agent_credentials``, ``invitations`` and ``user_sessions`` drop their ``platform_read`` policy: no
  cross-tenant job reads them (tenant listing and billing read ``tenants``/``usage_daily``; the identity
  resync reads ``agents``/``revoked_tokens``; retention and checkpoints read the event log).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aigos.server.db import rls
from aigos.server.db.types import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

APP = rls.APP_ROLE
NEW_TENANT_OWNED = ("invitations", "user_sessions")
NO_PLATFORM_READ = ("api_keys", "tenant_members", "agent_credentials", *NEW_TENANT_OWNED)

FUNCTIONS = {
    "aigos_find_user_id(text)": """
        CREATE OR REPLACE FUNCTION aigos_find_user_id(p_email text) RETURNS uuid LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
          SELECT id FROM users WHERE email = p_email
        $$""",
    "aigos_member_password(text)": """
        CREATE OR REPLACE FUNCTION aigos_member_password(p_email text)
        RETURNS TABLE (user_id uuid, role text, password_hash text, accepted_at timestamptz) LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
          SELECT u.id, m.role, u.password_hash, m.accepted_at
          FROM users u JOIN tenant_members m ON m.user_id = u.id
          WHERE u.email = p_email AND m.tenant_id = aigos_current_tenant()
        $$""",
    "aigos_find_tenant(text)": """
        CREATE OR REPLACE FUNCTION aigos_find_tenant(p_key text) RETURNS uuid LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
          SELECT id FROM tenants WHERE slug = p_key OR id::text = p_key LIMIT 1
        $$""",
    "aigos_find_invitation(text)": """
        CREATE OR REPLACE FUNCTION aigos_find_invitation(p_hash text)
        RETURNS TABLE (id uuid, tenant_id uuid, user_id uuid, expires_at timestamptz,
                       accepted_at timestamptz) LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
          SELECT i.id, i.tenant_id, i.user_id, i.expires_at, i.accepted_at
          FROM invitations i WHERE i.token_hash = p_hash
        $$""",
    "aigos_find_session(text)": """
        CREATE OR REPLACE FUNCTION aigos_find_session(p_hash text)
        RETURNS TABLE (id uuid, tenant_id uuid, user_id uuid, role text, expires_at timestamptz,
                       revoked_at timestamptz, tenant_status text, plan_tier text) LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
          SELECT s.id, s.tenant_id, s.user_id, m.role, s.expires_at, s.revoked_at, t.status, t.plan_tier
          FROM user_sessions s
          JOIN tenants t ON t.id = s.tenant_id
          JOIN tenant_members m ON m.tenant_id = s.tenant_id AND m.user_id = s.user_id
          WHERE s.token_hash = p_hash AND m.accepted_at IS NOT NULL
        $$""",
    "aigos_find_platform_token(text)": """
        CREATE OR REPLACE FUNCTION aigos_find_platform_token(p_hash text) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
          SELECT name FROM platform_tokens WHERE token_hash = p_hash AND revoked_at IS NULL
        $$""",
    "aigos_platform_token_named(text)": """
        CREATE OR REPLACE FUNCTION aigos_platform_token_named(p_name text) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
          SELECT EXISTS (SELECT 1 FROM platform_tokens WHERE name = p_name)
        $$""",
}

_IS_TENANT_MEMBER = (
    "EXISTS (SELECT 1 FROM tenant_members m "
    "WHERE m.user_id = users.id AND m.tenant_id = aigos_current_tenant())"
)


def upgrade() -> None:
    op.add_column("tenant_members", sa.Column("accepted_at", UTCDateTime(), nullable=True))
    # Members who set a password joined; password-less ones were invited under the old scheme and stay
    # invited (an admin adding them again issues them an invitation token).
    op.execute(
        "UPDATE tenant_members SET accepted_at = created_at "
        "WHERE user_id IN (SELECT id FROM users WHERE password_hash IS NOT NULL)"
    )
    op.create_table(
        "invitations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("accepted_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_invitations_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_invitations_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invitations_token_hash")),
    )
    op.create_index("ix_invitations_tenant_id_user_id", "invitations", ["tenant_id", "user_id"])
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_user_sessions_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_user_sessions_token_hash")),
    )
    op.create_index("ix_user_sessions_tenant_id_user_id", "user_sessions", ["tenant_id", "user_id"])
    if not rls.is_postgres():
        return
    for table in NEW_TENANT_OWNED:
        rls.grant(table, "SELECT, INSERT, UPDATE, DELETE")
        rls.isolate_by_tenant(table)
    for table in NO_PLATFORM_READ:
        op.execute(f"DROP POLICY IF EXISTS platform_read ON {table}")
    _secure_users()
    _secure_platform_tokens()
    _secure_signing_keys()
    for signature, statement in FUNCTIONS.items():
        op.execute(statement)
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {APP}")


def _secure_users() -> None:
    op.execute("ALTER TABLE users ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE users FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_members_read ON users FOR SELECT TO {APP} USING ({_IS_TENANT_MEMBER})")
    op.execute(
        f"CREATE POLICY tenant_members_update ON users FOR UPDATE TO {APP} "
        f"USING ({_IS_TENANT_MEMBER}) WITH CHECK (true)"
    )
    op.execute(f"CREATE POLICY register ON users FOR INSERT TO {APP} WITH CHECK (true)")
    op.execute("CREATE POLICY schema_owner ON users TO CURRENT_USER USING (true) WITH CHECK (true)")
    op.execute(f"REVOKE SELECT, UPDATE ON users FROM {APP}")
    op.execute(f"GRANT SELECT (id, email, created_at) ON users TO {APP}")
    op.execute(f"GRANT UPDATE (password_hash) ON users TO {APP}")


def _secure_platform_tokens() -> None:
    op.execute("ALTER TABLE platform_tokens ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE platform_tokens FORCE ROW LEVEL SECURITY")
    # The server installs the bootstrap token on first start; it reads tokens only through the look-ups.
    op.execute(f"CREATE POLICY bootstrap ON platform_tokens FOR INSERT TO {APP} WITH CHECK (true)")
    op.execute("CREATE POLICY schema_owner ON platform_tokens TO CURRENT_USER USING (true) WITH CHECK (true)")
    op.execute(f"REVOKE SELECT ON platform_tokens FROM {APP}")  # noqa: S608 (no input: a constant)


def _secure_signing_keys() -> None:
    op.execute("ALTER TABLE signing_keys ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE signing_keys FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY server_keys ON signing_keys TO {APP} USING (true) WITH CHECK (true)")
    op.execute("CREATE POLICY schema_owner ON signing_keys TO CURRENT_USER USING (true) WITH CHECK (true)")


def downgrade() -> None:
    if rls.is_postgres():
        for signature in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {signature}")
        for table, policies in {
            "users": ("tenant_members_read", "tenant_members_update", "register", "schema_owner"),
            "platform_tokens": ("bootstrap", "schema_owner"),
            "signing_keys": ("server_keys", "schema_owner"),
        }.items():
            for policy in policies:
                op.execute(f"DROP POLICY IF EXISTS {policy} ON {table}")
            op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        op.execute(f"GRANT SELECT, UPDATE ON users TO {APP}")
        op.execute(f"GRANT SELECT ON platform_tokens TO {APP}")
        for table in ("api_keys", "tenant_members", "agent_credentials"):
            op.execute(
                f"CREATE POLICY platform_read ON {table} AS PERMISSIVE FOR SELECT TO {APP} "
                "USING (aigos_platform_scope())"
            )
    op.drop_table("user_sessions")
    op.drop_table("invitations")
    with op.batch_alter_table("tenant_members") as batch:
        batch.drop_column("accepted_at")
