"""Compiling a tenant's policy set on the event loop: in pieces, other work runs in between."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from aigos.core import policy as core
from aigos.server.policy.state import compile_in_pieces, select_in_pieces


def documents() -> list[dict[str, Any]]:
    """Four policies of 400 rules, each rule its own action; every fifth denies."""
    return [
        {
            "id": f"p{p}",
            "name": f"p{p}",
            "priority": p,
            "rules": [
                {"id": f"r{n}", "effect": "deny" if n % 5 == 0 else "allow", "actions": [f"act_{n}"]}
                for n in range(p * 400, (p + 1) * 400)
            ],
        }
        for p in range(4)
    ]


async def test_other_work_runs_while_a_large_set_compiles() -> None:
    ticks = 0
    done = asyncio.Event()

    async def other_request() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    running = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    ticks = 0
    compiled = await compile_in_pieces(3, documents())
    done.set()
    await running
    # 1,600 rules in steps of 100: the other task ran at least once per step.
    assert ticks >= 1_600 // core.RULES_PER_STEP
    reference = core.PolicySet(3, documents())
    who = core.Subject.of("agent")
    assert compiled.version == 3
    for action in ("act_0", "act_1", "act_1599", "act_800", "other"):
        asked = core.Request.of(action, "doc")
        assert core.evaluate(compiled, who, asked) == core.evaluate(reference, who, asked)


def with_patterns() -> list[dict[str, Any]]:
    """Ten policies of 400 rules, every second rule with three action patterns (6,000 patterns)."""
    return [
        {
            "id": f"p{p}",
            "name": f"p{p}",
            "priority": p % 3,
            "rules": [
                {
                    "id": f"r{n}",
                    "effect": "deny" if n % 5 == 0 else "allow",
                    "actions": [f"act_{n}", *([f"grp_{n % 7}_*", f"*_{n}", f"x?{n}"] if n % 2 else [])],
                }
                for n in range(p * 400, (p + 1) * 400)
            ],
        }
        for p in range(10)
    ]


async def test_an_agents_selection_and_an_actions_rules_are_worked_out_in_pieces() -> None:
    documents = with_patterns()
    compiled = await compile_in_pieces(5, documents)
    who = core.Subject.of("agent")
    ticks = 0
    done = asyncio.Event()

    async def other_request() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    running = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    ticks = 0
    effective = await select_in_pieces(compiled, who, "GRP_3_read")
    done.set()
    await running
    # 4,000 rules placed in pieces of 2,000, 6,000 patterns tried in chunks of 1,000: other work between.
    assert ticks >= 4_000 // core.ITEMS_PER_STEP + 6_000 // core.PATTERNS_PER_STEP
    assert effective.knows("grp_3_read")
    assert compiled.cached(who) is effective
    reference = core.PolicySet(5, documents)
    for action in ("GRP_3_read", "act_1", "x?1", "xx1", "z_399", "other"):
        asked = core.Request.of(action, "doc")
        effective = await select_in_pieces(compiled, who, action)
        assert core.evaluate(effective, who, asked) == core.evaluate(reference, who, asked)


async def test_a_large_set_frozen_out_of_garbage_collection_is_still_freed() -> None:
    """Compiling a large set freezes it in steps (no full collector pass walks it); dropped, it goes."""
    gc.collect()
    before = gc.get_freeze_count()
    compiled: core.PolicySet | None = await compile_in_pieces(1, with_patterns())
    frozen = gc.get_freeze_count()
    assert frozen - before > 4_000  # objects of the compiled set, moved out of the collector's reach
    assert compiled is not None
    compiled = None
    # A freeze also takes whatever else is alive at that moment (the test runner's own objects), which
    # stays: what must go is the compiled set, thousands of objects at least.
    assert frozen - gc.get_freeze_count() > 4_000


async def test_a_costly_resource_is_tested_in_pieces_before_the_check() -> None:
    costly = [
        {"id": f"r{n}", "effect": "deny", "actions": ["read"], "resources": [f"*a*{n}x*b", f"a?*{n}c*"]}
        for n in range(2_000)
    ]
    compiled = await compile_in_pieces(1, [{"id": "p", "name": "p", "rules": costly}])
    who = core.Subject.of("agent")
    await select_in_pieces(compiled, who, "read")
    ticks = 0
    done = asyncio.Event()

    async def other_request() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    running = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    ticks = 0
    asked = core.Request.of("read", "a" * 2_048)
    narrowed = await select_in_pieces(compiled, who, "read", asked)
    done.set()
    await running
    # 4,000 patterns, each test counted 9 times on 2,048 characters: other work between the pieces.
    assert ticks >= 4_000 * 9 // core.PATTERNS_PER_STEP - 1
    assert core.evaluate(narrowed, who, asked) == core.evaluate(compiled, who, asked)
    assert compiled.cached(who) is not narrowed  # the agent's selection is kept as it was
