"""A replica's in-memory state that follows bus channels: what the identity and policy states share.

Subscribe before loading (so nothing published in between is missed), apply other replicas' messages as
they arrive (a replica applies its own when it makes them, and skips them when they come back), and
reload after a ``resync`` (a lost connection or a consumer that fell behind: messages may be missing).
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from typing import Any

import structlog

from aigos.core.canonical import canonical, parse
from aigos.server.background import cancel
from aigos.server.bus.base import Bus, BusUnavailable, Subscription

log = structlog.get_logger("aigos.bus.follower")
#: How long stopping waits for announcements still being published.
PUBLISH_AT_STOP_SECONDS = 1.0


class Follower(ABC):
    """Keeps state current from ``channels``; subclasses say how to apply a message and how to reload."""

    #: Names the listening task and the log lines.
    name = "follower"

    def __init__(self, bus: Bus, *channels: str) -> None:
        self.bus = bus
        self.channels = channels
        #: Marks this replica's own messages, applied before publishing and skipped when they return.
        self.origin = uuid.uuid4().hex
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> bool:
        """Whether bus notifications are flowing, so the memory state can be trusted."""
        return self._subscription is not None and self._subscription.connected

    async def start(self) -> None:
        """Subscribe, then load the state, then listen."""
        self._subscription = self.bus.pubsub.subscribe(*self.channels)
        await self._subscription.open()
        await self.load()
        self._task = asyncio.create_task(self._listen(), name=self.name)

    async def stop(self) -> None:
        """Let announcements under way go out (a moment at most), then stop listening."""
        if self._publishing:
            await asyncio.wait(set(self._publishing), timeout=PUBLISH_AT_STOP_SECONDS)
        await cancel(self._task, *self._publishing)
        if self._subscription is not None:
            await self._subscription.close()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Tell every other replica (a failure is logged: they catch up at their next resync)."""
        try:
            await self.bus.pubsub.publish(channel, canonical({**message, "origin": self.origin}))
        except BusUnavailable as exc:
            # Expected during an outage, once per announcement: a line each, not a stack trace each.
            log.warning("bus_publish_failed", follower=self.name, message=message, error=str(exc))
        except Exception:
            log.exception("bus_publish_failed", follower=self.name, message=message)

    def publish_soon(self, channel: str, message: dict[str, Any]) -> None:
        """``publish`` without waiting for it: an answer must not wait on the bus (a stalled Redis would
        hold it for seconds), and what the bus misses the others catch up with at their next resync."""
        task = asyncio.create_task(self.publish(channel, message), name=f"{self.name}-publish")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    @abstractmethod
    async def load(self) -> None:
        """Read the state from the database at start."""

    @abstractmethod
    async def resync(self) -> None:
        """Messages may have been missed: reload, or drop what may be stale."""

    @abstractmethod
    async def receive(self, message: dict[str, Any]) -> None:
        """Apply another replica's message (or one published from outside a replica, without origin)."""

    async def _listen(self) -> None:
        assert self._subscription is not None
        async for message in self._subscription:
            try:
                if message.is_resync:
                    await self.resync()
                    continue
                data = parse(message.data)
                if isinstance(data, dict) and data.get("origin") != self.origin:
                    await self.receive(data)
            except Exception:
                log.exception("follower_update_failed", follower=self.name)
