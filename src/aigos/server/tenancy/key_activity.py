"""``last_used_at`` of API keys, kept in memory per request and written in batches."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import update

from aigos.server.background import PeriodicFlush
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow
from aigos.server.tenancy.models import ApiKey


class KeyActivity(PeriodicFlush):
    """Remembers when each key was last used; one UPDATE per key per flush, not one per request."""

    name = "api-key-activity"

    def __init__(self, database: Database, interval: float) -> None:
        super().__init__(interval)
        self.database = database
        self._seen: dict[uuid.UUID, tuple[uuid.UUID, datetime]] = {}

    def touch(self, tenant_id: uuid.UUID, api_key_id: uuid.UUID) -> None:
        """Record a use of the key now."""
        self._seen[api_key_id] = (tenant_id, utcnow())

    def pending(self, api_key_id: uuid.UUID) -> datetime | None:
        """A use recorded here but not yet written."""
        entry = self._seen.get(api_key_id)
        return entry[1] if entry else None

    async def flush(self) -> None:
        """Write every recorded use; keep them for the next try if the write fails."""
        if not self._seen:
            return
        batch, self._seen = self._seen, {}
        try:
            async with self.database.session() as session:
                for key_id, (tenant_id, used_at) in batch.items():
                    await set_tenant(session, tenant_id)
                    await session.execute(
                        update(ApiKey)
                        .where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id)
                        .values(last_used_at=used_at)
                    )
        except Exception:
            for key_id, entry in batch.items():
                self._seen.setdefault(key_id, entry)
            raise
