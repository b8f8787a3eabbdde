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
    p_tenant uuid, p_prev_seq bigint, p_prev_hash text, p_recorded_at timestamptz,
    p_compact_range jsonb, p_relaxed boolean,
    p_seq bigint[], p_event_id uuid[], p_event_type text[], p_agent_id text[],
    p_occurred_at timestamptz[], p_actor_type text[], p_actor_id text[], p_source text[],
    p_outcome text[], p_request_id text[], p_trace_id text[], p_span_id text[], p_data text[],
    p_entry_prev_hash text[], p_hash text[]
) RETURNS TABLE (appended boolean, head_seq bigint, head_hash text, head_recorded_at timestamptz,
                 head_compact_range jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    last integer := cardinality(p_seq);
    found_head audit_heads%ROWTYPE;
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    IF p_relaxed THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    UPDATE audit_heads AS h
       SET seq = p_seq[last], hash = p_hash[last], recorded_at = p_recorded_at,
           compact_range = p_compact_range
     WHERE h.tenant_id = p_tenant AND h.seq = p_prev_seq AND h.hash = p_prev_hash;
    IF NOT FOUND AND p_prev_seq = 0 THEN
        INSERT INTO audit_heads (tenant_id, seq, hash, recorded_at, compact_range)
        VALUES (p_tenant, p_seq[last], p_hash[last], p_recorded_at, p_compact_range)
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
    SELECT p_tenant, e.seq, p_recorded_at, e.event_id, e.event_type, e.agent_id, e.occurred_at,
           e.actor_type, e.actor_id, e.source, e.outcome, e.request_id, e.trace_id, e.span_id, e.data,
           e.prev_hash, e.hash
      FROM unnest(p_seq, p_event_id, p_event_type, p_agent_id, p_occurred_at, p_actor_type, p_actor_id,
                  p_source, p_outcome, p_request_id, p_trace_id, p_span_id, p_data, p_entry_prev_hash,
                  p_hash)
        AS e(seq, event_id, event_type, agent_id, occurred_at, actor_type, actor_id, source, outcome,
             request_id, trace_id, span_id, data, prev_hash, hash);
    RETURN QUERY SELECT true, p_seq[last], p_hash[last], p_recorded_at, p_compact_range;
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
    "aigos_audit_append(uuid, bigint, text, timestamptz, jsonb, boolean, bigint[], uuid[], text[], text[], "
    "timestamptz[], text[], text[], text[], text[], text[], text[], text[], text[], text[], text[])",
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
