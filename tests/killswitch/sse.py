"""A small Server-Sent Events reader over httpx streaming, written from the SSE specification (no library)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    """One dispatched event (comments are counted separately)."""

    event: str
    data: str
    id: str | None

    @property
    def json(self) -> dict[str, Any]:
        """The ``data`` field parsed as JSON."""
        value: dict[str, Any] = json.loads(self.data)
        return value


@dataclass
class SseStream:
    """An open ``text/event-stream`` response, read event by event."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    closed: bool = False
    #: The ``opened`` event's data (the signed anchor), kept aside: ``next`` returns the commands.
    opened: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._lines = self.response.aiter_lines()

    async def next(self, within: float = 5.0) -> Event | None:
        """The next event, or None when the server ended the stream."""
        return await asyncio.wait_for(self._next(), within)

    async def _next(self) -> Event | None:
        event, data, last_id = "message", [], None
        async for line in self._lines:
            if line == "":
                if data and event == "opened":
                    self.opened = json.loads("\n".join(data))
                elif data:
                    return Event(event, "\n".join(data), last_id)
                event, data = "message", []
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                last_id = value
        self.closed = True
        return None

    async def wait_comment(self, text: str, within: float = 5.0) -> None:
        """Read until a comment ``text`` arrived (events read meanwhile are an error)."""

        async def read() -> None:
            while text not in self.comments:
                line = await self._lines.__anext__()
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line:
                    raise AssertionError(f"unexpected line {line!r}")

        await asyncio.wait_for(read(), within)

    async def wait_opened(self, within: float = 5.0) -> dict[str, Any]:
        """Read the ``opened`` event that follows the ``connected`` comment; its data (the anchor)."""

        async def read() -> dict[str, Any]:
            event, data = "message", []
            while True:
                line = await self._lines.__anext__()
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data.append(line.partition(":")[2].strip())
                elif line == "" and data:
                    if event != "opened":
                        raise AssertionError(f"expected the opened event first, got {event!r}")
                    opened: dict[str, Any] = json.loads("\n".join(data))
                    self.opened = opened
                    return opened

        return await asyncio.wait_for(read(), within)


class SseClient:
    """Opens kill-switch streams with an agent token."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._contexts: list[Any] = []

    async def open(
        self, token: str, last_event_id: int | None = None, path: str = "/v1/kill-switch/stream"
    ) -> SseStream:
        """Connect; the stream is open (and registered) once its first comment arrived."""
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        context = self.http.stream("GET", path, headers=headers, timeout=httpx.Timeout(10.0, read=30.0))
        response = await context.__aenter__()
        self._contexts.append(context)
        stream = SseStream(response)
        if response.status_code == 200:
            await stream.wait_comment("connected")
            await stream.wait_opened()
        return stream

    async def aclose(self) -> None:
        """Close every stream opened."""
        for context in reversed(self._contexts):
            with contextlib.suppress(Exception):
                await context.__aexit__(None, None, None)
        self._contexts.clear()
