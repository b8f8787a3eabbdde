"""Statements whose size grows with their input, cut to what the database drivers accept.

asyncpg refuses a statement with more than 32,767 bind parameters, and SQLite (``SQLITE_MAX_VARIABLE_NUMBER``)
more than 32,766: a multi-row ``INSERT`` or an ``IN (...)`` over a whole fleet fails past a few thousand
agents otherwise, and fails the same way every time it is retried.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

#: Bind parameters one statement may carry, with room for the few its ``WHERE`` adds.
MAX_PARAMETERS = 32_000


def batches(items: Sequence[T], parameters_each: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices small enough for one statement, each item taking
    ``parameters_each`` bind parameters."""
    size = max(1, MAX_PARAMETERS // max(1, parameters_each))
    for start in range(0, len(items), size):
        yield items[start : start + size]
