"""The agent's kill-switch state in this process: running, paused or terminated, and the gate guarded
calls pass through (one attribute read when running, so it costs nothing on the hot path)."""

from __future__ import annotations

import asyncio
import threading
import time

from aigos.sdk.errors import AgentPaused, AgentTerminated

RUNNING, PAUSED, TERMINATED = "active", "paused", "terminated"


class AgentControl:
    """Applies TERMINATE / PAUSE / RESUME and makes guarded calls obey them."""

    def __init__(self, *, on_pause: str = "wait", pause_timeout: float | None = None) -> None:
        self.on_pause = on_pause
        self.pause_timeout = pause_timeout
        self.state = RUNNING
        self.reason = ""
        self._changed = threading.Condition()

    @property
    def terminated(self) -> bool:
        """Whether TERMINATE was obeyed."""
        return self.state == TERMINATED

    def apply(self, command: str, reason: str = "") -> str:
        """Apply ``TERMINATE``/``PAUSE``/``RESUME``; returns the ack outcome. Termination is final."""
        with self._changed:
            if self.state == TERMINATED:
                return "terminated"
            if command == "TERMINATE":
                self.state, outcome = TERMINATED, "terminated"
            elif command == "PAUSE":
                self.state, outcome = PAUSED, "paused"
            elif command == "RESUME":
                self.state, outcome = RUNNING, "resumed"
            else:
                return "rejected"
            self.reason = reason
            self._changed.notify_all()
            return outcome

    def _raise_if_terminated(self) -> None:
        if self.state == TERMINATED:
            raise AgentTerminated(f"the agent was terminated: {self.reason or 'kill switch'}")

    def gate(self) -> None:
        """Return when a guarded call may run: raise if terminated; if paused, wait (or raise)."""
        if self.state == RUNNING:
            return
        self._raise_if_terminated()
        if self.on_pause == "raise":
            raise AgentPaused(f"the agent is paused: {self.reason or 'kill switch'}")
        deadline = None if self.pause_timeout is None else time.monotonic() + self.pause_timeout
        with self._changed:
            while self.state == PAUSED:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise AgentPaused("the agent stayed paused past pause_timeout")
                self._changed.wait(left)
        self._raise_if_terminated()

    async def agate(self) -> None:
        """``gate`` for coroutines: waits without blocking the event loop."""
        if self.state == RUNNING:
            return
        self._raise_if_terminated()
        if self.on_pause == "raise":
            raise AgentPaused(f"the agent is paused: {self.reason or 'kill switch'}")
        deadline = None if self.pause_timeout is None else time.monotonic() + self.pause_timeout
        # Commands may arrive on another thread: poll briefly instead of sharing a loop-bound primitive.
        while self.state == PAUSED:
            if deadline is not None and time.monotonic() >= deadline:
                raise AgentPaused("the agent stayed paused past pause_timeout")
            await asyncio.sleep(0.02)
        self._raise_if_terminated()
