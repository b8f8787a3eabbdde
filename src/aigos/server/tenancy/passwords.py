"""Human passwords: argon2id, computed off the event loop (each hash costs tens of milliseconds).

The cost is set by ``AIGOS_PASSWORD_HASH_MEMORY_KIB`` and ``AIGOS_PASSWORD_HASH_TIME_COST`` (defaults: the
argon2 library's recommendation, 64 MiB and 3 passes). A stored hash names its own parameters, so changing
them affects new hashes only and every stored one still verifies.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


class Passwords:
    """Hashes and verifies human passwords with argon2id at a configured cost."""

    def __init__(self, memory_kib: int = 65_536, time_cost: int = 3) -> None:
        self._hasher = PasswordHasher(memory_cost=memory_kib, time_cost=time_cost)

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password``."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str, password: str) -> bool:
        """Whether ``password`` matches ``stored_hash``."""
        try:
            return await asyncio.to_thread(self._hasher.verify, stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False
