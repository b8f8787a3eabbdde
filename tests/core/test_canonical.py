"""The canonical JSON every hash and signature is computed over."""

from __future__ import annotations

import math
from typing import Any

import pytest

from aigos.core.canonical import NotCanonicalizable, canonical, parse

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**64 - 1,
    -(2**63),
    1.5,
    "",
    "plain",
    "Zoë ✓ 日本 😀",
    [],
    {},
    [1, "two", None, [3, {"b": 1, "a": 2}]],
    {"z": {"y": [{"x": 1, "w": 2}], "v": "ü"}, "a": [], "m": None},
]


def test_keys_sorted_and_no_whitespace() -> None:
    value = {"b": 1, "a": [1, 2, {"d": None, "c": True}], "c": {"z": "x", "y": False}}
    assert canonical(value) == b'{"a":[1,2,{"c":true,"d":null}],"b":1,"c":{"y":false,"z":"x"}}'


def test_key_insertion_order_is_irrelevant() -> None:
    forward = {"a": 1, "b": {"c": 2, "d": [{"e": 3, "f": 4}]}}
    backward = {"b": {"d": [{"f": 4, "e": 3}], "c": 2}, "a": 1}
    assert canonical(forward) == canonical(backward)


def test_keys_sort_by_code_point() -> None:
    # Uppercase before lowercase, digits before letters, and code point (UTF-8 byte) order for non-ASCII,
    # including astral characters after U+FFFF (RFC 8785 would sort by UTF-16 units instead).
    value = {"b": 0, "B": 0, "1": 0, "é": 0, "\uffff": 0, "\U0001f600": 0, "": 0}
    keys = list(parse(canonical(value)))
    assert keys == ["", "1", "B", "b", "é", "\uffff", "\U0001f600"]
    assert keys == sorted(value)


def test_non_ascii_is_kept_as_utf8() -> None:
    text = "Zoë ✓ 日本 😀"
    assert canonical({"name": text}) == '{"name":"Zoë ✓ 日本 😀"}'.encode()
    assert b"\\u" not in canonical(text)


def test_required_escapes() -> None:
    assert canonical('quote " backslash \\ newline \n tab \t') == (
        b'"quote \\" backslash \\\\ newline \\n tab \\t"'
    )
    assert canonical("\x01") == b'"\\u0001"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b"null"),
        (True, b"true"),
        (False, b"false"),
        (0, b"0"),
        (1, b"1"),
        (-7, b"-7"),
        (1.0, b"1.0"),
        (0.1, b"0.1"),
        ("x", b'"x"'),
        ([], b"[]"),
        ({}, b"{}"),
        (2**64 - 1, b"18446744073709551615"),
        (-(2**63), b"-9223372036854775808"),
    ],
)
def test_scalars(value: Any, expected: bytes) -> None:
    assert canonical(value) == expected


@pytest.mark.parametrize("value", VALUES)
def test_idempotent_through_parse(value: Any) -> None:
    once = canonical(value)
    assert canonical(parse(once)) == once
    assert canonical(parse(once.decode())) == once
    assert parse(once) == value


def test_parse_accepts_non_canonical_text() -> None:
    text = '{ "b" : 1,\n  "a" : [ 1 , 2 ] }'
    assert canonical(parse(text)) == b'{"a":[1,2],"b":1}'
    assert canonical(parse(text.encode())) == b'{"a":[1,2],"b":1}'


@pytest.mark.parametrize("text", ["", "{", "{'a': 1}", "NaN", "[1,]", '{"a":1}x', b"\xff"])
def test_parse_rejects_invalid_json_with_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        parse(text)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30, {"n": 2**64}, [-(2**100)]])
def test_integers_beyond_64_bits_raise(value: Any) -> None:
    with pytest.raises(NotCanonicalizable):
        canonical(value)


@pytest.mark.parametrize("value", [{1: "a"}, {None: 1}, {(1, 2): 1}, {"ok": {2.5: 1}}, [{True: 1}]])
def test_non_string_keys_raise(value: Any) -> None:
    with pytest.raises(NotCanonicalizable):
        canonical(value)


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", object(), {"x": frozenset()}, complex(1, 2)])
def test_unsupported_types_raise(value: Any) -> None:
    with pytest.raises(NotCanonicalizable):
        canonical(value)


def test_not_canonicalizable_is_a_value_error() -> None:
    assert issubclass(NotCanonicalizable, ValueError)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_raise(value: float) -> None:
    with pytest.raises(NotCanonicalizable):
        canonical({"x": value})
