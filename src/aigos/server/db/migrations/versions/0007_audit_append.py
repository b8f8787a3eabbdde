"""audit: append a chain segment in one statement (PostgreSQL)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

from aigos.server.db import rls

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The appender hashes entries onto the head it last saw; this moves the head and inserts the entries only
# if the head is still exactly there (sequence and hash), in one round trip instead of lock, insert and
# update. When another writer got there first it changes nothing and answers the head it found, so the
# caller rehashes onto that one. SECURITY INVOKER: it runs as the application role, under row-level
# security, with the tenant it sets for the transaction, like every other statement the server sends.
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
    IF p_relaxed THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
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
    -- One JSON array per entry, in the column order below: one parameter for the whole segment, parsed
    -- here rather than encoded column by column in the server process (whose event loop serves requests).
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

# The head as it is now (nulls before the first append), for a process that has not appended to this
# tenant yet; with p_lock, locked until the transaction ends, for a writer that kept losing the race.
HEAD = """
CREATE OR REPLACE FUNCTION aigos_audit_head(p_tenant uuid, p_lock boolean)
RETURNS TABLE (head_seq bigint, head_hash text, head_recorded_at timestamptz, head_compact_range jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    found_head audit_heads%ROWTYPE;
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    IF p_lock THEN
        SELECT * INTO found_head FROM audit_heads AS h WHERE h.tenant_id = p_tenant FOR UPDATE;
    ELSE
        SELECT * INTO found_head FROM audit_heads AS h WHERE h.tenant_id = p_tenant;
    END IF;
    RETURN QUERY SELECT found_head.seq, found_head.hash::text, found_head.recorded_at,
                        found_head.compact_range;
END
$$
"""

SIGNATURES = (
    "aigos_audit_append(uuid, bigint, text, bigint, text, timestamptz, jsonb, boolean, jsonb)",
    "aigos_audit_head(uuid, boolean)",
)


def upgrade() -> None:
    if not rls.is_postgres():
        return
    op.execute(APPEND)
    op.execute(HEAD)
    for function in SIGNATURES:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {rls.APP_ROLE}")


def downgrade() -> None:
    if not rls.is_postgres():
        return
    for function in SIGNATURES:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
