"""The replica's identity state forgets revocations once the revoked tokens would have expired anyway."""

from __future__ import annotations

import time

from aigos.server.bus import MemoryBus
from aigos.server.db import Database
from aigos.server.identity.state import IdentityState


async def test_expired_revocations_are_forgotten() -> None:
    state = IdentityState(Database("sqlite+aiosqlite://"), MemoryBus())
    past, future = time.time() - 60, time.time() + 3600
    for n in range(1023):
        await state.announce_revoked(f"old-{n}", past)
    await state.announce_revoked("live", future)  # the 1024th entry triggers the clean-up
    assert state.is_revoked("live")
    assert not state.is_revoked("old-0")
    await state.announce_revoked("another", future)
    assert state.is_revoked("another")
