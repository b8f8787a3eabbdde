"""Compiling a tenant's policy set on the event loop: in pieces, other work runs in between."""

from __future__ import annotations

import asyncio
from typing import Any

from aigos.core import policy as core
from aigos.server.policy.state import compile_in_pieces


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
