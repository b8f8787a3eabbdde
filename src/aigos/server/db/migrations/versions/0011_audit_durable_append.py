"""audit: every append commits durably (no more synchronous_commit = off for batches)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op

from aigos.server.db import rls

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# 0007 let a batch append commit without waiting for the WAL flush (p_relaxed). A PostgreSQL crash then lost
# batches the writer had already taken off its queue, with nothing on the record. The batch writer now
# releases its journal's copy of an event once the append returns, so the commit must be durable. The
# parameter stays (same signature, same grants; a process still on the old code may pass true) and is
# ignored: the transaction commits with the server's synchronous_commit.
APPEND = """
CREATE OR REPLACE FUNCTION aigos_audit_append(
    p_tenant uuid, p_prev_seq bigint, p_prev_hash text, p_last_seq bigint, p_last_hash text,
    p_recorded_at timestamptz, p_compact_range jsonb, p_relaxed boolean, p_rows jsonb
) RETURNS TABLE (appended boolean, head_seq bigint, head_hash text, head_recorded_at timestamptz,
                 head_compact_range jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    found_head audit_heads%ROWTYPE;
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    UPDATE audit_heads AS h
       SET seq = p_last_seq, hash = p_last_hash, recorded_at = p_recorded_at,
           compact_range = p_compact_range
     WHERE h.tenant_id = p_tenant AND h.seq = p_prev_seq AND h.hash = p_prev_hash;
    IF NOT FOUND AND p_prev_seq = 0 THEN
        INSERT INTO audit_heads (tenant_id, seq, hash, recorded_at, compact_range)
        VALUES (p_tenant, p_last_seq, p_last_hash, p_recorded_at, p_compact_range)
        ON CONFLICT (tenant_id) DO NOTHING;
    END IF;
    IF NOT FOUND THEN
        SELECT * INTO found_head FROM audit_heads AS h WHERE h.tenant_id = p_tenant;
        RETURN QUERY SELECT false, found_head.seq, found_head.hash::text, found_head.recorded_at,
                            found_head.compact_range;
        RETURN;
    END IF;
    INSERT INTO audit_events (
        tenant_id, seq, recorded_at, event_id, event_type, agent_id, occurred_at, actor_type, actor_id,
        source, outcome, request_id, trace_id, span_id, data, prev_hash, hash)
    SELECT p_tenant, (r->>0)::bigint, p_recorded_at, (r->>1)::uuid, r->>2, r->>3, (r->>4)::timestamptz,
           r->>5, r->>6, r->>7, r->>8, r->>9, r->>10, r->>11, r->>12, r->>13, r->>14
      FROM jsonb_array_elements(p_rows) AS r;
    RETURN QUERY SELECT true, p_last_seq, p_last_hash, p_recorded_at, p_compact_range;
END
$$
"""


def upgrade() -> None:
    if not rls.is_postgres():
        return
    op.execute(APPEND)


def downgrade() -> None:
    if not rls.is_postgres():
        return
    # Back to 0007's definition, asynchronous batch commits included (read from its file: the revisions
    # folder is not a package).
    spec = importlib.util.spec_from_file_location(
        "_aigos_0007", Path(__file__).with_name("0007_audit_append.py")
    )
    assert spec is not None
    assert spec.loader is not None
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)
    op.execute(previous.APPEND)
