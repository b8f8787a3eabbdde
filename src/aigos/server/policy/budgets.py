"""Budgets and rate limits at check time: budgets reserved atomically on the bus's ledger and persisted to
the database in batches; rate limits counted on the bus's limiter (GCRA, shared by every replica).

The ledger (Redis, or memory in embedded mode) answers at request speed and is shared by every replica;
the database is where spend survives restarts. A ledger counter that is missing (first use, expiry, a
Redis restart) is seeded from the database plus what this process has not written yet, then the
reservation is retried. Spend is added to the database with ``spent = spent + delta`` upserts, so any
number of processes flush without coordinating. (After a Redis restart, spend that other processes had
not flushed yet is missing from the reseeded counters until they flush: at most one flush interval.)
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from aigos.core.policy import Budget, Decision, RateLimit
from aigos.server.background import PeriodicFlush
from aigos.server.bus import BusUnavailable, Ledger, RateLimiter
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow
from aigos.server.errors import ServiceUnavailable
from aigos.server.policy.models import BudgetSpend

#: How long a period's counter lives in the ledger: past its period, with room for clock skew.
_TTL = {"daily": 2 * 86_400.0, "monthly": 62 * 86_400.0, "lifetime": None}


class BudgetBook(PeriodicFlush):
    """The process's view of budgets: reservations on the ledger, spend written to the database."""

    name = "budget-book"

    def __init__(self, database: Database, ledger: Ledger, limiter: RateLimiter, interval: float) -> None:
        super().__init__(interval)
        self.database = database
        self.ledger = ledger
        self.limiter = limiter
        self._unwritten: defaultdict[tuple[uuid.UUID, str], float] = defaultdict(float)

    async def settle(self, tenant_id: uuid.UUID, decision: Decision) -> Decision:
        """Reserve the decision's cost on its budgets (only if it is allowed so far) and finish it."""
        lines = decision.budgets
        spent = await self.reserve(tenant_id, lines, decision.cost, commit=decision.allowed)
        return decision.with_spent(spent)

    async def count_rates(self, tenant_id: uuid.UUID, decision: Decision) -> Decision:
        """Count the check on its rate limits (only if allowed so far: else just look) and finish it.

        Raises 503 ``RATE_LIMIT_UNAVAILABLE`` (fail closed) when the limiter cannot be reached.
        """
        cost = 1 if decision.allowed else 0
        exceeded: list[RateLimit] = []
        try:
            for limit, key in decision.rate_limits:
                hit = await self.limiter.hit(
                    f"{tenant_id}:rate:{key}", limit.limit, limit.period_seconds, cost
                )
                if not hit.allowed or (hit.remaining < 1 and cost == 0):
                    exceeded.append(limit)
        except BusUnavailable as exc:
            raise ServiceUnavailable(
                "Rate limits cannot be checked right now; retry shortly.",
                code="RATE_LIMIT_UNAVAILABLE",
                headers={"Retry-After": "1"},
            ) from exc
        return decision.with_rates(exceeded)

    async def reserve(
        self, tenant_id: uuid.UUID, lines: Sequence[tuple[Budget, str]], amount: float, *, commit: bool
    ) -> dict[str, float]:
        """Each counter's spend before this reservation; ``amount`` is added to all if all have room.

        Dry-run budgets are counted but never refuse. Raises 503 ``BUDGET_UNAVAILABLE`` (fail closed) when
        the ledger cannot be reached.
        """
        keys = [key for _, key in lines]
        names = [f"{tenant_id}:{key}" for key in keys]
        limits = [budget.limit if budget.enforce else None for budget, _ in lines]
        try:
            reservation = await self.ledger.reserve(names, limits, amount, commit=commit)
            if reservation is None:
                await self._seed(tenant_id, lines)
                reservation = await self.ledger.reserve(names, limits, amount, commit=commit)
        except BusUnavailable as exc:
            raise ServiceUnavailable(
                "Budgets cannot be checked right now; retry shortly.",
                code="BUDGET_UNAVAILABLE",
                headers={"Retry-After": "1"},
            ) from exc
        if reservation is None:
            # Seeded and gone again at once (expired in between): refuse rather than spend unchecked.
            raise ServiceUnavailable("Budgets are being reloaded; retry.", code="BUDGET_UNAVAILABLE")
        if reservation.committed:
            for key in keys:
                self._unwritten[(tenant_id, key)] += amount
        return dict(zip(keys, reservation.spent, strict=True))

    async def spent(self, tenant_id: uuid.UUID, lines: Sequence[tuple[Budget, str]]) -> dict[str, float]:
        """What each budget counter holds, without reserving anything."""
        return await self.reserve(tenant_id, lines, 0.0, commit=False)

    async def _seed(self, tenant_id: uuid.UUID, lines: Sequence[tuple[Budget, str]]) -> None:
        stored = await self._stored(tenant_id, [key for _, key in lines])
        for budget, key in lines:
            value = stored.get(key, 0.0) + self._unwritten.get((tenant_id, key), 0.0)
            await self.ledger.seed(f"{tenant_id}:{key}", value, _TTL.get(budget.period))

    async def _stored(self, tenant_id: uuid.UUID, keys: list[str]) -> Mapping[str, float]:
        async with self.database.session() as session:
            await set_tenant(session, tenant_id)
            rows = await session.execute(
                select(BudgetSpend.key, BudgetSpend.spent).where(
                    BudgetSpend.tenant_id == tenant_id, BudgetSpend.key.in_(keys)
                )
            )
            return {row.key: float(row.spent) for row in rows}

    async def flush(self) -> None:
        """Add the spend reserved since the last flush to the database; kept for the next try on failure."""
        if not self._unwritten:
            return
        batch, self._unwritten = self._unwritten, defaultdict(float)
        try:
            by_tenant: dict[uuid.UUID, list[tuple[str, float]]] = {}
            for (tenant_id, key), amount in batch.items():
                by_tenant.setdefault(tenant_id, []).append((key, amount))
            async with self.database.session() as session:
                dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
                insert = pg_insert if dialect == "postgresql" else sqlite_insert
                now = utcnow()
                for tenant_id, rows in by_tenant.items():
                    await set_tenant(session, tenant_id)
                    stmt = insert(BudgetSpend).values(
                        [
                            {"tenant_id": tenant_id, "key": key, "spent": amount, "updated_at": now}
                            for key, amount in rows
                        ]
                    )
                    stmt = stmt.on_conflict_do_update(
                        index_elements=["tenant_id", "key"],
                        set_={"spent": BudgetSpend.spent + stmt.excluded["spent"], "updated_at": now},
                    )
                    await session.execute(stmt)
        except Exception:
            for counter, amount in batch.items():
                self._unwritten[counter] += amount
            raise
