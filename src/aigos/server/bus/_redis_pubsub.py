"""Redis pub/sub: one subscriber connection per bus, multiplexed over any number of local subscriptions.

One connection per process rather than per subscription, because every SSE client of the kill switch holds
a subscription and Redis connections are a shared, limited resource.

A supervisor task owns the connection: it connects, subscribes to every channel somebody listens to, reads
and fans messages out to the subscriptions' queues. When the connection breaks it reconnects with capped
exponential backoff, re-subscribes, and tells each subscription, channel by channel, through a ``resync``
message queued as soon as Redis confirms the new subscription (so a consumer reloading from the database on
``resync`` cannot miss anything published after it). It never gives up while the bus is open.

Redis confirms SUBSCRIBE/UNSUBSCRIBE per channel, in order. Counting commands sent and confirmations
received per channel tells when the server state matches what we asked for last, without waiting for
replies while holding anything: all bookkeeping happens synchronously on the event loop and commands reach
the socket in the order they were decided, through one writer task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from aigos.server.bus._subscription import DEFAULT_MAX_PENDING, QueueSubscription
from aigos.server.bus.base import BusUnavailable, Message, PubSub, Subscription

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[int]]


class RedisPubSub(PubSub):
    """Publishes through the command pool, receives through one supervised subscriber connection."""

    def __init__(
        self,
        publish: Publish,
        pool: ConnectionPool,
        prefix: str,
        *,
        subscribe_timeout: float,
        read_timeout: float,
        handshake_timeout: float,
        ping_interval: float,
        reconnect_backoff: tuple[float, float],
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self._publish = publish
        self._pool = pool
        self.prefix = prefix
        self.subscribe_timeout = subscribe_timeout
        self._max_pending = max_pending
        # The poll bounds how late a due PING goes out; a connection silent for dead_after is dead.
        self._ping_interval = ping_interval
        self._poll = min(1.0, ping_interval)
        self._dead_after = ping_interval + read_timeout
        self._handshake_timeout = handshake_timeout
        self._backoff_initial, self._backoff_max = reconnect_backoff
        # Full channel name -> local subscriptions listening on it (the channels we want subscribed).
        self._listeners: dict[str, set[_RedisSubscription]] = {}
        # Per channel, [commands sent, confirmations received] on the current connection.
        self._pending: dict[str, list[int]] = {}
        # Commands for the current connection; None while there is none.
        self._outbox: asyncio.Queue[tuple[str, ...] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._closed = False

    async def publish(self, channel: str, data: bytes) -> int:
        """Publish ``data`` on ``channel``; returns how many subscribed processes (connections) got it."""
        return await self._publish(self.prefix + channel, data)

    def subscribe(self, *channels: str) -> Subscription:
        """A subscription to ``channels``; it starts when entered (``async with``) or first iterated."""
        return _RedisSubscription(self, channels, self._max_pending)

    @property
    def connected(self) -> bool:
        """Whether the subscriber connection is up (False also before the first subscription)."""
        return self._outbox is not None

    async def close(self) -> None:
        """Stop the supervisor, drop the connection and end every subscription."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        subscriptions = {s for listeners in self._listeners.values() for s in listeners}
        for subscription in subscriptions:
            await subscription.close()

    # -- subscription bookkeeping (synchronous: never interleaves with the reader) --

    def attach(self, subscription: _RedisSubscription) -> None:
        """Start delivering ``subscription``'s channels to it, subscribing in Redis where needed."""
        if self._closed:
            raise BusUnavailable("the bus is closed")
        new: list[str] = []
        for channel in subscription.full_channels:
            listeners = self._listeners.get(channel)
            if listeners is None:
                self._listeners[channel] = {subscription}
                new.append(channel)
            else:
                listeners.add(subscription)
                if self._is_live(channel):
                    subscription.mark_live(channel)
        if new and self._outbox is not None:
            self._send("SUBSCRIBE", *new)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="aigos-bus-pubsub")

    def detach(self, subscription: _RedisSubscription) -> None:
        """Stop delivering to ``subscription``, unsubscribing in Redis channels nobody listens to any more."""
        gone: list[str] = []
        for channel in subscription.full_channels:
            listeners = self._listeners.get(channel)
            if listeners is None:
                continue
            listeners.discard(subscription)
            if not listeners:
                del self._listeners[channel]
                gone.append(channel)
        if gone and self._outbox is not None:
            self._send("UNSUBSCRIBE", *gone)

    def _is_live(self, channel: str) -> bool:
        counts = self._pending.get(channel)
        return self._outbox is not None and counts is not None and counts[0] == counts[1]

    def _send(self, *command: str) -> None:
        assert self._outbox is not None
        if command[0] in ("SUBSCRIBE", "UNSUBSCRIBE"):
            for channel in command[1:]:
                self._pending.setdefault(channel, [0, 0])[0] += 1
        self._outbox.put_nowait(command)

    def _dispatch(self, response: Any) -> None:
        # RESP2 and RESP3 both give [kind, channel, payload] for what matters here; PING replies
        # (b"PONG" or [b"pong", b""]) only prove the connection alive.
        if not isinstance(response, list) or len(response) != 3:
            return
        kind, raw_channel, payload = response
        if not isinstance(raw_channel, bytes):
            return
        channel = raw_channel.decode()
        if kind == b"message":
            listeners = self._listeners.get(channel)
            if listeners:
                message = Message(channel[len(self.prefix) :], bytes(payload))
                for subscription in listeners:
                    subscription.deliver(message)
        elif kind in (b"subscribe", b"unsubscribe"):
            counts = self._pending.get(channel)
            if counts is None:
                return
            counts[1] += 1
            if counts[1] < counts[0]:
                return
            # The server now reflects our last command, which matches whether anybody listens.
            listeners = self._listeners.get(channel)
            if listeners:
                for subscription in listeners:
                    subscription.mark_live(channel)
            else:
                del self._pending[channel]

    # -- the connection --

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._backoff_initial
        while not self._closed:
            # A private connection, not a pooled one: it must never serve anything but this loop.
            connection = self._pool.connection_class(**self._pool.connection_kwargs)
            started = loop.time()
            try:
                # The pool has no socket_timeout (see _write), so bound the handshake here.
                async with asyncio.timeout(self._handshake_timeout):
                    await connection.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
                await self._serve(connection)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures += 1
                # One warning per outage, not one per attempt.
                log = logger.warning if self._failures == 1 else logger.debug
                log("bus: pub/sub connection lost or refused (%s: %s); reconnecting", type(exc).__name__, exc)
            finally:
                self._on_lost()
                await connection.disconnect(nowait=True)
            if loop.time() - started > self._backoff_max:
                # It worked for a while: this is a new outage, start the backoff over.
                delay = self._backoff_initial
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _serve(self, connection: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue[tuple[str, ...] | None] = asyncio.Queue()
        self._pending = {}
        self._outbox = outbox
        if self._listeners:
            self._send("SUBSCRIBE", *self._listeners)
        writer = loop.create_task(self._write(connection, outbox), name="aigos-bus-pubsub-writer")
        if self._failures:
            logger.warning("bus: pub/sub reconnected after %d failed attempt(s)", self._failures)
            self._failures = 0
        try:
            last_heard = last_ping = loop.time()
            while True:
                response = await connection.read_response(timeout=self._poll, push_request=True)
                now = loop.time()
                if writer.done():
                    writer.result()
                    raise RedisConnectionError("pub/sub writer stopped")
                if response is None:
                    if now - last_heard > self._dead_after:
                        raise RedisConnectionError(f"no reply from Redis in {self._dead_after:.1f} s")
                    if now - last_ping >= self._ping_interval:
                        self._send("PING")
                        last_ping = now
                    continue
                last_heard = now
                self._dispatch(response)
        finally:
            # The marker stops the writer even if the cancellation were lost.
            outbox.put_nowait(None)
            writer.cancel()
            await asyncio.wait([writer])
            if not writer.cancelled():
                writer.exception()  # retrieved: the reader reports the failure

    @staticmethod
    async def _write(connection: AbstractConnection, outbox: asyncio.Queue[tuple[str, ...] | None]) -> None:
        # Without socket_timeout redis-py writes without asyncio.wait_for, whose Python 3.11 version can
        # swallow a cancellation; a stuck write is caught by the reader's liveness check instead.
        while True:
            command = await outbox.get()
            if command is None or not connection.is_connected:
                return  # never let send_command quietly open a fresh, unsubscribed connection
            await connection.send_command(*command, check_health=False)

    def _on_lost(self) -> None:
        if self._outbox is None:
            return
        self._outbox = None
        self._pending = {}
        for listeners in self._listeners.values():
            for subscription in listeners:
                subscription.mark_lost()


class _RedisSubscription(QueueSubscription):
    def __init__(self, pubsub: RedisPubSub, channels: tuple[str, ...], max_pending: int) -> None:
        super().__init__(channels, max_pending)
        self._pubsub = pubsub
        self.full_channels = tuple(pubsub.prefix + channel for channel in self.channels)
        self._live: set[str] = set()
        self._ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Whether Redis has confirmed every channel on the current connection."""
        return self.opened and self._ready.is_set()

    async def _attach(self) -> None:
        self._pubsub.attach(self)
        if self._ready.is_set():
            return
        try:
            async with asyncio.timeout(self._pubsub.subscribe_timeout):
                await self._ready.wait()
        except TimeoutError:
            # Not an error for the caller: delivery starts, with a resync, once Redis is back.
            if not self._ready.is_set():
                logger.warning("bus: subscription to %s not confirmed yet", ", ".join(self.channels))

    def _detach(self) -> None:
        self._pubsub.detach(self)
        self._ready.set()  # wakes an open() still waiting for a confirmation that no longer matters

    def mark_live(self, full_channel: str) -> None:
        """Redis confirmed ``full_channel`` on the current connection."""
        if full_channel in self._live:
            return
        self._live.add(full_channel)
        if self.opened:
            # open() returned before this confirmation, so the consumer may have missed messages.
            self.deliver_resync(full_channel[len(self._pubsub.prefix) :])
        if len(self._live) == len(self.full_channels):
            self._ready.set()

    def mark_lost(self) -> None:
        """The connection broke: nothing is confirmed any more."""
        self._live.clear()
        self._ready.clear()
