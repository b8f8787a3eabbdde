"""What one server process holds for its lifetime: settings, the database, the bus and its buffers."""

from __future__ import annotations

from dataclasses import dataclass, field

from aigos.server.audit.log import EventLog
from aigos.server.bus import Bus
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.tenancy.key_activity import KeyActivity
from aigos.server.tenancy.usage import UsageMeter


@dataclass
class Runtime:
    """The process-wide resources every request may use, opened in the lifespan and closed on shutdown."""

    settings: Settings
    database: Database
    bus: Bus
    usage: UsageMeter
    key_activity: KeyActivity
    events: EventLog
    features: list[str] = field(default_factory=list)

    def start(self) -> None:
        """Start the background flushers."""
        self.usage.start()
        self.key_activity.start()
        self.events.start()

    async def close(self) -> None:
        """Flush buffers into the database, then release the bus and the database pools."""
        await self.usage.stop()
        await self.key_activity.stop()
        await self.events.stop()
        await self.bus.close()
        await self.database.dispose()
