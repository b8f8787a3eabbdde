"""Server-sent events as the kill-switch stream sends them."""

from __future__ import annotations

import io

from aigos.sdk.sse import SseEvent, SseParser, read_lines


def events(lines: list[str]) -> list[SseEvent]:
    parser = SseParser()
    return [event for line in lines if (event := parser.feed(line)) is not None]


def test_fields_comments_and_multi_line_data() -> None:
    lines = [": keep-alive", "", "id: 7", "event: kill-switch", 'data: {"a":', "data: 1}", "", "data:x", ""]
    assert [(e.id, e.event, e.data) for e in events(lines)] == [
        ("7", "kill-switch", '{"a":\n1}'),
        ("7", "message", "x"),
    ]


def test_an_event_without_data_is_dropped_and_its_type_forgotten() -> None:
    assert events(["event: opened", "", "data: y", ""]) == [SseEvent(None, "message", "y")]


def test_an_id_with_nul_is_ignored() -> None:
    assert events(["id: 1", "data: a", "", "id: 2\x00", "data: b", ""]) == [
        SseEvent("1", "message", "a"),
        SseEvent("1", "message", "b"),
    ]


def test_read_lines_strips_endings_and_splits_overlong_lines() -> None:
    stream = io.BytesIO(b"id: 1\r\ndata: \xc3\xbc\n\n" + b"x" * 70_000 + b"\n")
    lines = list(read_lines(stream))
    assert lines[:3] == ["id: 1", "data: ü", ""]
    assert [len(line) for line in lines[3:]] == [65_536, 70_000 - 65_536]
