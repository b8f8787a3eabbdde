"""The one check of what both databases store alike: text, numbers, depth; and the SDK refusing the same."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aigos.core.reported import unreportable
from aigos.core.storable import (
    INT64_MAX,
    INT64_MIN,
    MAX_DEPTH,
    find_unstorable,
    text_problem,
)
from aigos.sdk.telemetry import TelemetryBuffer


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


@pytest.mark.parametrize(
    ("value", "pointer", "words"),
    [
        ("a\x00b", "", "NUL"),
        ({"name": "bot\x00"}, "/name", "NUL"),
        ({"tags": ["ok", "\ud800"]}, "/tags/1", "surrogate"),
        ({"ok": 1, "a\x00": 1}, "/a\x00", "key"),
        ({"x": {"\udfff": 1}}, "/x/\udfff", "surrogate"),
        ({"budget": float("inf")}, "/budget", "finite"),
        ({"budget": float("-inf")}, "/budget", "finite"),
        ({"budget": float("nan")}, "/budget", "finite"),
        ({"n": INT64_MAX + 1}, "/n", "64-bit"),
        ({"n": INT64_MIN - 1}, "/n", "64-bit"),
        ({"a/b": {"c~d": "\x00"}}, "/a~1b/c~0d", "NUL"),
    ],
)
def test_the_first_unstorable_part_is_named(value: Any, pointer: str, words: str) -> None:
    found = find_unstorable(value)
    assert found is not None
    assert found.pointer == pointer
    assert words in found.reason


def test_the_first_in_document_order_is_reported() -> None:
    found = find_unstorable({"a": [1, {"b": "\x00"}], "c": float("nan")})
    assert found is not None
    assert found.pointer == "/a/1/b"


def test_storable_values_pass() -> None:
    value = {"s": "héllo ✓ 𝄞", "n": [INT64_MIN, INT64_MAX, 0.5, -1e308, True, None], "d": {"": ""}}
    assert find_unstorable(value) is None
    assert text_problem("plain") is None
    assert text_problem("𝄞 ü") is None


def test_depth_is_bounded_at_the_limit() -> None:
    assert find_unstorable(nested(MAX_DEPTH)) is None
    found = find_unstorable(nested(MAX_DEPTH + 1))
    assert found is not None
    assert "deeper" in found.reason
    assert len(found.path) == MAX_DEPTH


def test_a_hostile_depth_costs_no_recursion() -> None:
    # Far past Python's recursion limit: an iterative walk answers, a recursive one would crash.
    found = find_unstorable(nested(100_000), max_depth=200_000)
    assert found is None
    assert find_unstorable(nested(100_000)) is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30,
)


def _storable_by_hand(value: Any, depth: int = 0) -> bool:
    # The rules spelt out recursively, to compare the iterative walk against.
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(_storable_by_hand(k) and _storable_by_hand(v, depth + 1) for k, v in value.items())
    return all(_storable_by_hand(item, depth + 1) for item in value)


@given(json_values)
def test_the_walk_agrees_with_the_rules(value: Any) -> None:
    assert (find_unstorable(value) is None) == _storable_by_hand(value)


@given(json_values)
def test_what_passes_survives_strict_json(value: Any) -> None:
    if find_unstorable(value) is None:
        text = json.dumps(value, allow_nan=False)
        assert json.loads(text) == value or text == json.dumps(json.loads(text), allow_nan=False)
        text.encode("utf-8")


# -- the SDK refuses what the server would ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ids", "field"),
    [
        ({"tool": "a\x00"}, {}, "data/tool"),
        ({"a\x00b": 1}, {}, "data/a\x00b"),
        ({"cost": float("inf")}, {}, "data/cost"),
        ({"n": 2**63}, {}, "data/n"),
        ({"deep": nested(MAX_DEPTH + 1)}, {}, "data/deep"),
        (None, {"trace_id": "t\x00"}, "trace_id"),
        (None, {"span_id": "\ud800"}, "span_id"),
    ],
)
def test_the_sdk_refuses_what_the_server_refuses(data: Any, ids: dict[str, str], field: str) -> None:
    problem = unreportable(data, **ids)
    assert problem is not None
    assert problem.startswith(field)
    buffer = TelemetryBuffer()
    with pytest.raises(ValueError, match="cannot be reported"):
        buffer.add("tool.completed", data, **ids)
    assert len(buffer) == 0


def test_the_sdk_queues_what_the_server_accepts() -> None:
    buffer = TelemetryBuffer()
    buffer.add("tool.completed", {"tool": "web", "cost": 0.25, "tags": ("a", "b")}, trace_id="abc")
    assert len(buffer) == 1
