"""GCRA (generic cell rate algorithm) in exact integer arithmetic, shared by both rate limiter backends.

State is one "theoretical arrival time" (TAT): when the bucket would be empty again. Each unit of cost
pushes it ``period / limit`` later; a request is allowed if the pushed TAT is at most ``period`` ahead of
now, which permits a burst of ``limit`` and a sustained ``limit / period``.

``period / limit`` is rarely a whole number of time units and float TATs drift after a burst (the
``limit``-th request of a burst could be refused by rounding), so the TAT is kept as a whole part plus a
numerator over ``limit``: ``tat + frac / limit``. The Redis Lua script mirrors this function line by line;
there every integer must stay below 2**53 (Lua numbers are doubles), see ``pick_scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Largest product ``limit * period`` (in time units) the Lua script can handle exactly, with headroom.
EXACT_LIMIT = 2**52


@dataclass(frozen=True, slots=True)
class GcraOutcome:
    """One decision; times are in the caller's integer time unit."""

    allowed: bool
    remaining: int
    reset_after: int
    retry_after: int
    #: The state to store when allowed: (whole TAT, numerator over limit). None when nothing changed.
    new_state: tuple[int, int] | None


def check_args(limit: int, period_seconds: float, cost: int) -> None:
    """Reject arguments no request could be judged against."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not (period_seconds > 0 and math.isfinite(period_seconds)):
        raise ValueError(f"period_seconds must be a positive number, got {period_seconds!r}")
    if cost < 0:
        raise ValueError(f"cost must be >= 0, got {cost}")
    if cost > limit:
        # Not a "deny": no wait would ever let it through, so a Retry-After would be a lie.
        raise ValueError(f"cost {cost} exceeds limit {limit}: such a request can never be allowed")


def pick_scale(limit: int, period_seconds: float) -> int:
    """Time units per second (µs, ms or s) fine enough for precision, coarse enough to stay exact in Lua."""
    for scale in (1_000_000, 1_000, 1):
        if limit * max(1, round(period_seconds * scale)) < EXACT_LIMIT:
            return scale
    raise ValueError(f"limit {limit} over {period_seconds} s is too large to track exactly")


def period_units(period_seconds: float, scale: int) -> int:
    """The period in time units, at least one."""
    return max(1, round(period_seconds * scale))


def step(now: int, state: tuple[int, int] | None, limit: int, period: int, cost: int) -> GcraOutcome:
    """Decide one request of ``cost`` at ``now`` given the stored ``state`` (None if absent or expired)."""
    tat, frac = state if state is not None else (now, 0)
    if frac >= limit:
        # Stored under a smaller limit: round up rather than hand out capacity.
        tat, frac = tat + 1, 0
    if tat < now:
        tat, frac = now, 0
    total = frac + cost * period
    new_tat = tat + total // limit
    new_frac = total % limit
    # Allowed iff new_tat + new_frac/limit - period <= now, compared without division.
    over = new_tat - period - now
    if over < 0 or (over == 0 and new_frac == 0):
        remaining = ((now - new_tat + period) * limit - new_frac) // period
        return GcraOutcome(
            allowed=True,
            remaining=max(0, min(limit, remaining)),
            reset_after=new_tat - now + (1 if new_frac else 0),
            retry_after=0,
            new_state=(new_tat, new_frac) if cost else None,
        )
    remaining = ((now - tat + period) * limit - frac) // period
    return GcraOutcome(
        allowed=False,
        # Fewer than ``cost`` units are free, by definition of a refusal.
        remaining=max(0, min(cost - 1, remaining)),
        reset_after=tat - now + (1 if frac else 0),
        retry_after=over + (1 if new_frac else 0),
        new_state=None,
    )
