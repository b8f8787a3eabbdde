"""When API keys were last used: buffered stamps on tenancy's own rows, written in batches by ``Touches``
(the app builds it, tenancy names the column)."""

from __future__ import annotations

from aigos.server.db import Database
from aigos.server.tenancy.models import ApiKey
from aigos.server.touches import Touches


def key_used(database: Database, flush_seconds: float) -> Touches:
    """``api_keys.last_used_at``: each authenticated request of the key."""
    return Touches(database, ApiKey, "last_used_at", flush_seconds)
