"""Server-sent events (the WHATWG ``text/event-stream`` format), as far as the kill-switch stream needs them:
``id``, ``event`` and ``data`` fields, comments, and blank lines ending an event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SseEvent:
    """One server-sent event."""

    id: str | None = None
    event: str = "message"
    data: str = ""


@dataclass
class SseParser:
    """Turns the stream's lines into events; the last ``id`` seen carries over to later events."""

    _id: str | None = None
    _event: str = "message"
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseEvent | None:
        """Feed one line (without its newline); returns an event when a blank line completes one."""
        if not line:
            if not self._data:
                self._event = "message"
                return None
            event = SseEvent(self._id, self._event, "\n".join(self._data))
            self._event, self._data = "message", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        return None


class LineSource(Protocol):
    """What ``read_lines`` reads from: an ``http.client.HTTPResponse`` or any binary file."""

    def readline(self, limit: int = -1, /) -> bytes:
        """At most ``limit`` bytes up to and including the next newline; ``b""`` at the end."""
        ...


def read_lines(source: LineSource) -> Iterator[str]:
    """The lines of a stream, decoded and without their line endings, until it ends.

    A line longer than 64 KiB comes out in pieces rather than growing a buffer without bound.
    """
    while True:
        raw = source.readline(65_536)
        if not raw:
            return
        yield raw.decode("utf-8", "replace").rstrip("\r\n")
