"""policy: old policy versions may be pruned (the newest ones per policy are kept, never rewritten)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from aigos.server.db import rls

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Versions stay unchangeable; deleting is now allowed, for pruning past a plan's ``versions_kept`` (the
# audit log keeps every change). 0006 refused both.
UPDATE_ONLY_PG = """
CREATE TRIGGER policy_versions_append_only BEFORE UPDATE ON policy_versions
FOR EACH ROW EXECUTE FUNCTION aigos_policy_versions_append_only()
"""
BOTH_PG = """
CREATE TRIGGER policy_versions_append_only BEFORE UPDATE OR DELETE ON policy_versions
FOR EACH ROW EXECUTE FUNCTION aigos_policy_versions_append_only()
"""
NO_DELETE_SQLITE = """
CREATE TRIGGER policy_versions_no_delete BEFORE DELETE ON policy_versions
BEGIN SELECT RAISE(ABORT, 'policy_versions is append-only'); END
"""


def upgrade() -> None:
    if not rls.is_postgres():
        op.execute("DROP TRIGGER IF EXISTS policy_versions_no_delete")
        return
    op.execute("DROP TRIGGER IF EXISTS policy_versions_append_only ON policy_versions")
    op.execute(UPDATE_ONLY_PG)
    rls.grant("policy_versions", "DELETE")


def downgrade() -> None:
    if not rls.is_postgres():
        op.execute(NO_DELETE_SQLITE)
        return
    op.execute(f"REVOKE DELETE ON policy_versions FROM {rls.APP_ROLE}")
    op.execute("DROP TRIGGER IF EXISTS policy_versions_append_only ON policy_versions")
    op.execute(BOTH_PG)
