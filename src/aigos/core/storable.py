"""What both databases store alike: the one check every text and JSON value passes before it is stored.

PostgreSQL refuses text with NUL (U+0000) and lone surrogates (U+D800..U+DFFF, no UTF-8 form), refuses
``NaN``/``Infinity`` in ``jsonb`` and numbers past its column types; SQLite stores all of them and then
fails later, elsewhere (a token carrying ``Infinity``, a batch writer stuck on one row). Refusing them
here, on the server's edge and in the SDK before it sends, makes both backends accept exactly the same
input. Pure: no I/O, iterative (a hostile depth cannot exhaust the stack), linear in the value's size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Containers (objects and arrays) nested deeper than this are refused in every free-form JSON value.
MAX_DEPTH = 32
#: The range of a signed 64-bit integer (PostgreSQL ``bigint``; SQLite's integers).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")

Key = str | int
_CONTAINERS = (dict, list, tuple)
# A parent-linked path: each container entered costs one tuple, and a pointer is built only on refusal.
_Path = tuple[Key, "_Path"] | None


@dataclass(frozen=True, slots=True)
class Unstorable:
    """The first part of a value the databases would not store alike: where it is, and why."""

    path: tuple[Key, ...]
    reason: str

    @property
    def pointer(self) -> str:
        """The JSON pointer (RFC 6901) of the refused part; ``""`` is the whole value."""
        return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in self.path)


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored (NUL or a lone surrogate), or ``None`` when it can."""
    if text.isascii():
        # The common case: one scan in C, no regular expression.
        return "contains a NUL character (U+0000)" if "\x00" in text else None
    found = _UNSTORABLE_CHAR.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "contains a NUL character (U+0000)"
    return f"contains a lone surrogate (U+{ord(char):04X}), which has no UTF-8 form"


def scalar_problem(value: object) -> str | None:
    """Why the JSON scalar ``value`` cannot be stored, or ``None`` (containers are not looked into)."""
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return None
        return "is an integer outside the signed 64-bit range"
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number (NaN and Infinity are not JSON)"
    return None


def _children(container: Any) -> Iterator[tuple[Any, Any]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


def _path_of(node: _Path) -> tuple[Key, ...]:
    parts: list[Key] = []
    while node is not None:
        key, node = node
        parts.append(key)
    return tuple(reversed(parts))


def find_unstorable(value: object, max_depth: int = MAX_DEPTH) -> Unstorable | None:
    """The first part of the parsed JSON ``value``, in document order, that the databases would not store
    alike: text (object keys too) with NUL or a lone surrogate, a non-finite number, an integer past
    64 bits, or containers nested deeper than ``max_depth``. ``None`` when all of it is storable.

    Tuples count as arrays (the SDK's callers pass them); other objects are left to the serialiser.
    """
    if not isinstance(value, _CONTAINERS):
        reason = scalar_problem(value)
        return None if reason is None else Unstorable((), reason)
    if max_depth < 1:
        return Unstorable((), f"is nested deeper than {max_depth} levels")
    # A stack of the containers being walked, each with the path that leads to it: depth is its length.
    # Exact types first: this runs on every request body, and JSON parses into exactly these.
    stack: list[tuple[Iterator[tuple[Any, Any]], _Path]] = [(_children(value), None)]
    while stack:
        children, path = stack[-1]
        for key, child in children:
            reason = None
            if isinstance(key, str) and ("\x00" in key if key.isascii() else text_problem(key) is not None):
                return Unstorable(_path_of((key, path)), f"has a key that {text_problem(key)}")
            kind = type(child)
            if kind is str:
                if "\x00" in child if child.isascii() else text_problem(child) is not None:
                    reason = text_problem(child)
            elif kind is dict or kind is list or (kind is not bool and isinstance(child, _CONTAINERS)):
                if len(stack) >= max_depth:
                    return Unstorable(_path_of((key, path)), f"is nested deeper than {max_depth} levels")
                stack.append((_children(child), (key, path)))
                break
            elif kind is int:
                if not INT64_MIN <= child <= INT64_MAX:
                    reason = scalar_problem(child)
            elif kind is float:
                if not math.isfinite(child):
                    reason = scalar_problem(child)
            elif child is not None and kind is not bool:
                reason = scalar_problem(child)
            if reason is not None:
                return Unstorable(_path_of((key, path)), reason)
        else:
            stack.pop()
    return None
