"""W3C Trace Context's ``traceparent``, read as the specification's receivers must (its own examples)."""

from __future__ import annotations

import pytest

from aigos.core.tracecontext import parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE}-{PARENT}-01",  # the specification's example, sampled
        f"00-{TRACE}-{PARENT}-00",
        f" 00-{TRACE}-{PARENT}-01 ",
        f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like",  # a later version: read as 00
    ],
)
def test_a_valid_traceparent_gives_its_trace_and_parent(value: str) -> None:
    assert parse_traceparent(value) == (TRACE, PARENT)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{'0' * 32}-{PARENT}-01",  # an all-zero trace-id
        f"00-{TRACE}-{'0' * 16}-01",  # an all-zero parent-id
        f"00-{TRACE.upper()}-{PARENT}-01",  # lowercase hex only
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}0-01",
        f"0-{TRACE}-{PARENT}-01",
        f"00_{TRACE}_{PARENT}_01",
    ],
)
def test_anything_else_is_ignored(value: str) -> None:
    assert parse_traceparent(value) is None
