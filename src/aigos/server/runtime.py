"""What one server process holds for its lifetime: settings, the database and the bus."""

from __future__ import annotations

from dataclasses import dataclass, field

from aigos.server.bus import Bus
from aigos.server.config import Settings
from aigos.server.db import Database


@dataclass
class Runtime:
    """The process-wide resources every request may use, opened in the lifespan and closed on shutdown."""

    settings: Settings
    database: Database
    bus: Bus
    features: list[str] = field(default_factory=list)

    async def close(self) -> None:
        """Release pools: the bus first (it may still flush into the database), then the database."""
        await self.bus.close()
        await self.database.dispose()
