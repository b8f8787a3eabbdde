"""Work in steps: how a long computation (a compile, a selection, an encoding) lets an event loop breathe.

A computation in steps is a generator that pauses every few milliseconds of work and returns its result;
``finish`` runs one at once, and the server runs one on its event loop (``aigos.server.policy.pieces``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

_T = TypeVar("_T")
#: A computation in steps: a generator that pauses (yields ``None``) every few milliseconds of work and
#: returns its result. ``finish`` runs one at once; the server runs one on its event loop and lets other
#: requests in at each pause, so that the largest policy set a plan allows holds up no other request.
Steps = Generator[None, None, _T]

#: Rules, or patterns, handled between two pauses of a computation in steps (a few milliseconds of work).
RULES_PER_STEP = 50
PATTERNS_PER_STEP = 500
#: Cheap items (rules placed or indexed, selections filtered) handled between two pauses.
ITEMS_PER_STEP = 1_000
#: Bytes of JSON encoded between two pauses.
BYTES_PER_STEP = 1 << 20


class Pace:
    """When a computation in steps pauses: after ``RULES_PER_STEP`` rules or ``PATTERNS_PER_STEP``
    patterns since its last pause, whichever comes first (a rule may hold hundreds of patterns)."""

    __slots__ = ("_patterns", "_rules")

    def __init__(self) -> None:
        self._rules = self._patterns = 0

    def due(self, patterns: int, rules: int = 1) -> bool:
        """Count one more rule with ``patterns`` patterns; whether it is time to pause."""
        self._rules += rules
        self._patterns += patterns
        if self._rules >= RULES_PER_STEP or self._patterns >= PATTERNS_PER_STEP:
            self._rules = self._patterns = 0
            return True
        return False


def finish(steps: Steps[_T]) -> _T:
    """The result of a computation in steps, run at once (off an event loop, or where it is small)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: _T = done.value
            return result
