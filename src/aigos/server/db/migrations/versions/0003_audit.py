"""audit: the append-only event log, heads, checkpoints, anchors; daily partitions on PostgreSQL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aigos.server.db import rls
from aigos.server.db.types import JSONDocument, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APPEND_ONLY_PG = """
CREATE OR REPLACE FUNCTION aigos_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END $$
"""

# Partitions are created by the server (as the application role) through this owner-run function,
# days ahead of need; a clash with a concurrent creator is harmless.
ENSURE_PARTITIONS = """
CREATE OR REPLACE FUNCTION aigos_audit_ensure_partitions(p_from date, p_days integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  d date;
  name text;
  created integer := 0;
BEGIN
  FOR i IN 0..p_days LOOP
    d := p_from + i;
    name := 'audit_events_p' || to_char(d, 'YYYYMMDD');
    IF to_regclass(name) IS NULL THEN
      BEGIN
        EXECUTE format(
          'CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
          name, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        created := created + 1;
      -- Another process created it, or the DEFAULT partition holds rows of that day: skip the day.
      EXCEPTION WHEN duplicate_table OR check_violation THEN NULL;
      END;
    END IF;
  END LOOP;
  RETURN created;
END $$
"""

# Retention: drop whole daily partitions that end on or before p_before. Row triggers do not fire.
DROP_PARTITIONS = """
CREATE OR REPLACE FUNCTION aigos_audit_drop_partitions_before(p_before date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  part record;
  dropped integer := 0;
BEGIN
  FOR part IN
    SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit_events'::regclass AND c.relname ~ '^audit_events_p[0-9]{8}$'
      AND to_date(substring(c.relname from 15), 'YYYYMMDD') < p_before
  LOOP
    EXECUTE format('DROP TABLE %I', part.relname);
    dropped := dropped + 1;
  END LOOP;
  RETURN dropped;
END $$
"""

TENANT_OWNED = {
    "audit_events": "SELECT, INSERT",
    "audit_heads": "SELECT, INSERT, UPDATE",
    "audit_checkpoints": "SELECT, INSERT",
    "audit_anchors": "SELECT, INSERT, UPDATE",
}


def upgrade() -> None:
    postgres = rls.is_postgres()
    op.create_table(
        "audit_events",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("agent_id", sa.String(length=255), nullable=True),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("actor_type", sa.String(length=20), nullable=False),
        sa.Column("actor_id", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("trace_id", sa.String(length=64), nullable=True),
        sa.Column("span_id", sa.String(length=32), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", "recorded_at", name=op.f("pk_audit_events")),
        postgresql_partition_by="RANGE (recorded_at)",
    )
    op.create_index("ix_audit_events_tenant_id_event_id", "audit_events", ["tenant_id", "event_id"])
    op.create_index("ix_audit_events_tenant_id_recorded_at", "audit_events", ["tenant_id", "recorded_at"])
    op.create_index(
        "ix_audit_events_tenant_id_event_type_seq", "audit_events", ["tenant_id", "event_type", "seq"]
    )
    op.create_index(
        "ix_audit_events_tenant_id_agent_id_seq", "audit_events", ["tenant_id", "agent_id", "seq"]
    )
    op.create_table(
        "audit_heads",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("compact_range", JSONDocument, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_audit_heads")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("compact_range", JSONDocument, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "tree_size", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_anchors",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("compact_range", JSONDocument, nullable=False),
        sa.Column("pruned_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_audit_anchors")),
    )
    op.create_table(
        "audit_prune_guard",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_prune_guard")),
    )
    if postgres:
        op.execute("CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT")
        op.execute(APPEND_ONLY_PG)
        for table in ("audit_events", "audit_checkpoints"):
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION aigos_append_only()"
            )
        op.execute(ENSURE_PARTITIONS)
        op.execute(DROP_PARTITIONS)
        op.execute("SELECT aigos_audit_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, 8)")
        for table, privileges in TENANT_OWNED.items():
            rls.grant(table, privileges)
            rls.isolate_by_tenant(table)
        for function in (
            "aigos_audit_ensure_partitions(date, integer)",
            "aigos_audit_drop_partitions_before(date)",
        ):
            op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
            op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {rls.APP_ROLE}")
    else:
        op.execute(
            "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            "WHEN NOT EXISTS (SELECT 1 FROM audit_prune_guard) "
            "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE ON audit_checkpoints "
            "BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints "
            "BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END"
        )


def downgrade() -> None:
    for table in ("audit_prune_guard", "audit_anchors", "audit_checkpoints", "audit_heads", "audit_events"):
        op.drop_table(table)
    if rls.is_postgres():
        op.execute("DROP FUNCTION IF EXISTS aigos_audit_ensure_partitions(date, integer)")
        op.execute("DROP FUNCTION IF EXISTS aigos_audit_drop_partitions_before(date)")
        op.execute("DROP FUNCTION IF EXISTS aigos_append_only()")
