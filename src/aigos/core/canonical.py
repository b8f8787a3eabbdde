"""The one canonical serialisation that every hash and signature in AIGOS is computed over.

JSON, UTF-8, object keys sorted, no insignificant whitespace, as ``orjson`` writes it with
``OPT_SORT_KEYS``. One implementation on both sides (server and verifier) so a float or a non-ASCII
string can never be written one way and checked another. The exact format, for verifiers in other
languages, and how it differs from RFC 8785 (JCS): docs/canonical-json.md, with the vectors in
tests/core/canonical_vectors.json.
"""

from __future__ import annotations

import math
from typing import Any

import orjson


class NotCanonicalizable(ValueError):
    """The value has no canonical JSON form (an integer beyond 64 bits, a non-string key, NaN, ...)."""


def canonical(value: Any, *, check_finite: bool = True) -> bytes:
    """The canonical bytes of a JSON-compatible value.

    ``check_finite=False`` skips the walk that refuses NaN and infinities, for values that came out of a
    JSON parser (which never produces them): it is the verifier's hot loop.
    """
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise NotCanonicalizable(str(exc)) from exc
    # orjson writes NaN and infinities as null, which would give them the hash of None.
    if check_finite and b"null" in encoded and _has_non_finite(value):
        raise NotCanonicalizable("NaN and infinity have no JSON form")
    return encoded


def _has_non_finite(value: Any) -> bool:
    # A loop over a stack, the exact types first: every event's data is walked once (policy decisions hold
    # nulls), and generators inside ``any`` cost more than the values they look at.
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is dict:
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


def parse(data: bytes | str) -> Any:
    """Parse JSON text (the inverse of ``canonical`` for canonical input)."""
    return orjson.loads(data)
