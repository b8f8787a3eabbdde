"""policy: each policy row keeps its document's size and rule count, so the plan's totals sum two columns

A change used to re-read and re-encode every document of the tenant to count them (27 MiB at the
enterprise plan's limits, most of a second on the event loop). The existing rows are back-filled here, a
few at a time.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

from aigos.server.db.types import JSONDocument

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: Rows read per round of the back-fill: bounds its memory (documents are up to 512 KiB each).
BATCH = 200

_policies = sa.table(
    "policies",
    sa.column("id", sa.Uuid()),
    sa.column("document", JSONDocument),
    sa.column("document_bytes", sa.Integer()),
    sa.column("rule_count", sa.Integer()),
)


def _size(document: dict[str, Any]) -> int:
    # As ``aigos.server.policy.limits.document_size`` counts (frozen here: a migration must not change).
    return len(orjson.dumps(document))


def upgrade() -> None:
    with op.batch_alter_table("policies") as batch:
        batch.add_column(sa.Column("document_bytes", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("rule_count", sa.Integer(), nullable=False, server_default="0"))
    bind = op.get_bind()
    last: Any = None
    while True:
        query = sa.select(_policies.c.id, _policies.c.document).order_by(_policies.c.id).limit(BATCH)
        if last is not None:
            query = query.where(_policies.c.id > last)
        rows = bind.execute(query).all()
        if not rows:
            break
        for row in rows:
            bind.execute(
                _policies.update()
                .where(_policies.c.id == row.id)
                .values(document_bytes=_size(row.document), rule_count=len(row.document.get("rules") or ()))
            )
        last = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table("policies") as batch:
        batch.drop_column("rule_count")
        batch.drop_column("document_bytes")
