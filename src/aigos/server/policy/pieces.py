"""Long computations on the event loop, a piece at a time, so that no request waits behind them.

A computation in steps (``aigos.core.policy.Steps``: compiling a policy set, an agent's selection,
validating a document, encoding a bundle) is run here with a pause at each step, where every other request,
``/health`` included, gets its turn.
"""

from __future__ import annotations

import asyncio
import gc
from typing import TypeVar

from aigos.core.policy import Steps

T = TypeVar("T")
#: Pieces of one computation between two freezes of what it built.
FREEZE_EVERY = 8


async def in_pieces(steps: Steps[T], *, freezing: bool = False) -> T:
    """The result of a computation in steps (``aigos.core.policy.Steps``), run on the event loop: other
    requests, ``/health`` included, get their turn at each of its pauses.

    A thread would not help: compiling is pure Python and holds the GIL, and a thread holding it makes
    the loop wait a whole switch interval at each of its system calls. A long computation whose result is
    kept (``freezing``: a replica's compiled set, an agent's selection) also freezes what it built so far
    every ``FREEZE_EVERY`` pieces (see ``freeze``); one whose result is soon dropped does not (a freeze
    costs a collection of the young generations, and what it froze would only be walked once).
    """
    pieces = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            if freezing and pieces >= FREEZE_EVERY:
                freeze()
            result: T = done.value
            return result
        pieces += 1
        if freezing and pieces % FREEZE_EVERY == 0:
            freeze()
        await asyncio.sleep(0)


def freeze() -> None:
    """Take what exists out of the garbage collector's reach, as the process does once at start.

    A compiled set of 50,000 rules is about a million objects; each full pass of the collector walks
    every one not frozen, on the event loop (``bench/policy_compile.py`` shows the longest), and a set
    that grows while it is compiled sets off a full pass each time it grows by a quarter. Frozen objects
    are still freed as soon as nothing refers to them (a compiled set holds no reference cycles); the
    young generations are collected first, so the garbage frozen with them is only what was already old.
    """
    gc.collect(1)
    gc.freeze()
