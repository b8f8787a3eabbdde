"""Knowing at once that the server was told to stop, for the responses that never end by themselves.

uvicorn waits for open connections to finish before it runs the lifespan's shutdown, and a stream (the
kill switch's, the telemetry view's) never finishes by itself: its clients must be told to go (and
reconnect, to another replica if there is one) as soon as the signal comes. uvicorn's own signal handler
(``Server.handle_exit``, installed before the lifespan starts and restored after) is wrapped to close
first. Outside uvicorn (tests in-process) there is nothing to wrap; ``close()`` does it by hand.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any


class Shutdown:
    """The process's "stop now" for streams: ``closing``, a waitable event, and callbacks."""

    def __init__(self) -> None:
        self.closing = False
        self._closed = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the server is told to stop (at once if it already was)."""
        self._callbacks.append(callback)
        if self.closing:
            callback()

    def close(self) -> None:
        """The server is stopping: end the streams."""
        if self.closing:
            return
        self.closing = True
        self._closed.set()
        for callback in self._callbacks:
            callback()

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if the stop comes first; whether it came."""
        try:
            async with asyncio.timeout(seconds):
                await self._closed.wait()
        except TimeoutError:
            return False
        return True

    def watch_signals(self) -> None:
        """Close as soon as uvicorn is told to stop (SIGTERM, SIGINT), before its own handler runs."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                current = signal.getsignal(sig)
            except ValueError:
                return
            if not callable(current) or not hasattr(getattr(current, "__self__", None), "should_exit"):
                continue

            def on_signal(signum: int, frame: FrameType | None, previous: Any = current) -> None:
                loop.call_soon_threadsafe(self.close)
                previous(signum, frame)

            try:
                signal.signal(sig, on_signal)
            except ValueError:  # not the main thread
                return
