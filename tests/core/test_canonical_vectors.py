"""The canonical JSON format as written down in docs/canonical-json.md, checked with vectors.

``canonical_vectors.json`` is meant for verifiers in other languages too: each vector's ``input`` is JSON text
(with ``NaN``/``Infinity`` where a refusal is tested), ``canonical`` the exact output as a string whose UTF-8
bytes are the canonical bytes, and ``sha256`` their hash; ``refused`` marks inputs with no canonical form.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from aigos.core.canonical import NotCanonicalizable, canonical

VECTORS: list[dict[str, Any]] = json.loads((Path(__file__).parent / "canonical_vectors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS, ids=[vector["name"] for vector in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    # The standard library's parser keeps integers exact and reads NaN and Infinity, as the vectors need.
    value = json.loads(vector["input"])
    if vector.get("refused"):
        with pytest.raises(NotCanonicalizable):
            canonical(value)
        return
    encoded = canonical(value)
    assert encoded == vector["canonical"].encode()
    assert hashlib.sha256(encoded).hexdigest() == vector["sha256"]


def test_the_vectors_are_valid_json_that_parses_to_its_own_canonical_form() -> None:
    for vector in VECTORS:
        if not vector.get("refused"):
            assert canonical(json.loads(vector["canonical"])) == vector["canonical"].encode()


def documented_float(number: float) -> str:
    """A float written by the rule in docs/canonical-json.md, from Python's shortest round-trip digits."""
    if number == 0:
        return "-0.0" if math.copysign(1.0, number) < 0 else "0.0"
    sign = "-" if number < 0 else ""
    mantissa, _, exponent = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0").rstrip("0") or "0"
    if exponent:
        point = int(exponent)
    elif whole != "0":
        point = len(whole) - 1
    else:
        point = -(len(fraction) - len(fraction.lstrip("0")) + 1)
    if -6 < point < 16:
        if point >= 0:
            return f"{sign}{digits[: point + 1].ljust(point + 1, '0')}.{digits[point + 1 :] or '0'}"
        return f"{sign}0.{'0' * (-point - 1)}{digits}"
    significand = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
    return f"{sign}{significand}e{'+' if point > 0 else '-'}{abs(point)}"


def test_floats_follow_the_documented_rule() -> None:
    # Random bit patterns cover every exponent; scaled small numbers cover the fixed/scientific borders.
    chooser = random.Random(8785)
    numbers = [1e-5, 9.99e-6, 1e16, 9999999999999998.0, 5e-324, -0.0, 2.0**53]
    while len(numbers) < 20_000:
        number = struct.unpack("<d", chooser.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(number):
            numbers.append(number)
        numbers.append(chooser.uniform(-1, 1) * 10.0 ** chooser.randint(-8, 18))
    for number in numbers:
        assert canonical(number).decode() == documented_float(number), repr(number)
