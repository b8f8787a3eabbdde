"""Row-level security on PostgreSQL: the role the app runs as, and the per-tenant policies.

The server connects with ``role=aigos_app`` (a role without BYPASSRLS), so even a superuser URL is held to
the policies. Every tenant-owned table gets ``ENABLE`` and ``FORCE ROW LEVEL SECURITY`` and a policy
that shows and accepts only rows of ``app.tenant_id``; with no tenant set, it shows nothing. The schema
owner (who runs migrations and owns the few SECURITY DEFINER look-ups) keeps full access.
These helpers emit SQL for migrations; they do nothing on SQLite.
"""

from __future__ import annotations

from alembic import op

from aigos.server.db.database import APP_ROLE

__all__ = ["APP_ROLE", "create_app_role", "grant", "is_postgres", "isolate_by_tenant"]

CONTEXT_FUNCTIONS = [
    """
    CREATE OR REPLACE FUNCTION aigos_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$
    """,
    # Set only in transactions of a platform-admin request (listing tenants, billing export).
    """
    CREATE OR REPLACE FUNCTION aigos_platform_scope() RETURNS boolean
    LANGUAGE sql STABLE AS $$ SELECT coalesce(current_setting('app.platform_scope', true), '') = 'on' $$
    """,
]


def is_postgres() -> bool:
    """Whether the migration runs on PostgreSQL."""
    return op.get_bind().dialect.name == "postgresql"


def create_app_role() -> None:
    """Create the application role (once per cluster) and the current-tenant function."""
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
            CREATE ROLE {APP_ROLE} NOLOGIN NOBYPASSRLS;
          END IF;
        EXCEPTION WHEN duplicate_object THEN NULL;
        END $$
        """
    )
    op.execute(f"GRANT {APP_ROLE} TO CURRENT_USER")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    for statement in CONTEXT_FUNCTIONS:
        op.execute(statement)


def grant(table: str, privileges: str) -> None:
    """Give the application role ``privileges`` (e.g. ``SELECT, INSERT``) on ``table``."""
    op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")


def isolate_by_tenant(table: str, column: str = "tenant_id") -> None:
    """Put ``table`` under row-level security keyed by ``column`` = the transaction's tenant.

    A platform-admin transaction may read every tenant's rows but write none of them.
    """
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON {table} TO {APP_ROLE} "
        f"USING ({column} = aigos_current_tenant()) WITH CHECK ({column} = aigos_current_tenant())"
    )
    op.execute(
        f"CREATE POLICY platform_read ON {table} AS PERMISSIVE FOR SELECT TO {APP_ROLE} "
        "USING (aigos_platform_scope())"
    )
    op.execute(f"CREATE POLICY schema_owner ON {table} TO CURRENT_USER USING (true) WITH CHECK (true)")
