"""The queue-backed subscription both backends share: lifecycle, bounded inbox and resync on overflow."""

from __future__ import annotations

import asyncio
import enum
from abc import abstractmethod

from aigos.server.bus.base import Message, Subscription, check_channels

#: Per-subscriber backlog before older messages are dropped in favour of a resync notice.
DEFAULT_MAX_PENDING = 1000


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class QueueSubscription(Subscription):
    """A subscription fed by its backend through ``deliver`` and read through an ``asyncio.Queue``.

    Backends implement ``_attach`` (start receiving, may await) and ``_detach`` (stop receiving, must not
    await, so closing can never be interrupted halfway).
    """

    def __init__(self, channels: tuple[str, ...], max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._channels = check_channels(channels)
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._max_pending = max_pending
        # None is the end-of-stream marker, put by close().
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._state = _State.NEW
        self._open_lock = asyncio.Lock()

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels, as given to ``subscribe`` (duplicates removed)."""
        return self._channels

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called (or the bus closed)."""
        return self._state is _State.CLOSED

    @property
    def opened(self) -> bool:
        """Whether ``open`` has completed and the subscription is not closed."""
        return self._state is _State.OPEN

    @abstractmethod
    async def _attach(self) -> None:
        """Start receiving deliveries."""

    @abstractmethod
    def _detach(self) -> None:
        """Stop receiving deliveries and release backend resources."""

    async def open(self) -> None:
        """Start the subscription (idempotent); raises ``BusUnavailable`` if the bus is closed."""
        if self._state is not _State.NEW:
            return
        async with self._open_lock:
            if self._state is not _State.NEW:
                return
            try:
                await self._attach()
            except BaseException:
                # Cancelled or failed while attaching: leave nothing registered behind.
                self._finish()
                raise
            if self._state is _State.NEW:
                self._state = _State.OPEN

    async def close(self) -> None:
        """Stop delivery, free the subscription and end iteration (idempotent)."""
        self._finish()

    def _finish(self) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._detach()
        self._drain()
        self._queue.put_nowait(None)

    async def __anext__(self) -> Message:
        """The next message or resync notice; ``StopAsyncIteration`` once closed."""
        if self._state is _State.NEW:
            await self.open()
        if self._state is _State.CLOSED and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            # Leave the marker for any other coroutine iterating the same subscription.
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        return item

    def deliver(self, message: Message) -> None:
        """Queue ``message`` without blocking the publisher; a consumer far behind gets resyncs instead."""
        if self._state is _State.CLOSED:
            return
        if self._queue.qsize() >= self._max_pending:
            # Unbounded queues would let one stuck consumer exhaust memory; what it missed it can reload.
            self._drain()
            for channel in self._channels:
                self._queue.put_nowait(Message(channel, b"", "resync"))
        self._queue.put_nowait(message)

    def deliver_resync(self, channel: str) -> None:
        """Tell the consumer that messages on ``channel`` may have been missed."""
        if self._state is not _State.CLOSED:
            self._queue.put_nowait(Message(channel, b"", "resync"))

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
