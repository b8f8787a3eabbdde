""" "Last used" and "last seen" timestamps, kept in memory per request and written in batches.

A column like ``api_keys.last_used_at`` or ``agents.last_seen_at`` changes on every request; writing it
each time would turn reads into writes. Instead the newest time per row is remembered and one UPDATE per
row is issued per flush (and on shutdown).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import update

from aigos.server.background import PeriodicFlush
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow


class Touches(PeriodicFlush):
    """Buffered updates of one timestamp column of one tenant-owned table (with ``id`` and ``tenant_id``)."""

    def __init__(self, database: Database, model: Any, column: str, interval: float) -> None:
        super().__init__(interval)
        self.name = f"touch-{model.__tablename__}-{column}"
        self.database = database
        self.model = model
        self.column = column
        self._seen: dict[uuid.UUID, tuple[uuid.UUID, datetime]] = {}

    def touch(self, tenant_id: uuid.UUID, row_id: uuid.UUID) -> None:
        """Record a use of the row now."""
        self._seen[row_id] = (tenant_id, utcnow())

    def pending(self, row_id: uuid.UUID) -> datetime | None:
        """A use recorded here but not yet written."""
        entry = self._seen.get(row_id)
        return entry[1] if entry else None

    async def flush(self) -> None:
        """Write every recorded use; keep them for the next try if the write fails."""
        if not self._seen:
            return
        batch, self._seen = self._seen, {}
        try:
            async with self.database.session() as session:
                for row_id, (tenant_id, moment) in batch.items():
                    await set_tenant(session, tenant_id)
                    await session.execute(
                        update(self.model)
                        .where(self.model.id == row_id, self.model.tenant_id == tenant_id)
                        .values({self.column: moment})
                    )
        except Exception:
            for row_id, entry in batch.items():
                self._seen.setdefault(row_id, entry)
            raise
