"""Usage metering: counts per tenant, metric and UTC day, buffered in memory and added to the database.

Counting costs a dictionary update per event; a flush adds the buffered counts with one upsert per row
(``count = count + excluded.count``), so any number of processes can flush without coordination.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.background import PeriodicFlush
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow
from aigos.server.tenancy.models import Tenant, UsageDaily

Metric = Literal["api_calls", "agent_registrations", "policy_checks"]
METRICS: tuple[Metric, ...] = ("api_calls", "agent_registrations", "policy_checks")
_Key = tuple[uuid.UUID, date, str]


class UsageMeter(PeriodicFlush):
    """The process's usage buffer."""

    name = "usage-meter"

    def __init__(self, database: Database, interval: float) -> None:
        super().__init__(interval)
        self.database = database
        self._buffer: Counter[_Key] = Counter()

    def count(self, tenant_id: uuid.UUID, metric: Metric, amount: int = 1) -> None:
        """Add ``amount`` to today's ``metric`` of the tenant."""
        self._buffer[(tenant_id, utcnow().date(), metric)] += amount

    def pending(self, tenant_id: uuid.UUID) -> dict[tuple[date, str], int]:
        """This process's counts for the tenant that are not written yet."""
        return {(day, metric): n for (tenant, day, metric), n in self._buffer.items() if tenant == tenant_id}

    async def flush(self) -> None:
        """Add the buffered counts to the database; on failure they go back into the buffer."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, Counter()
        try:
            async with self.database.session() as session:
                by_tenant: dict[uuid.UUID, list[tuple[_Key, int]]] = {}
                for key, amount in batch.items():
                    by_tenant.setdefault(key[0], []).append((key, amount))
                for tenant_id, rows in by_tenant.items():
                    await set_tenant(session, tenant_id)
                    await _add(session, rows)
        except Exception:
            self._buffer.update(batch)
            raise


async def _add(session: AsyncSession, rows: list[tuple[_Key, int]]) -> None:
    values = [
        {"tenant_id": tenant, "day": day, "metric": metric, "count": amount}
        for (tenant, day, metric), amount in rows
    ]
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(UsageDaily).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "day", "metric"],
        set_={"count": UsageDaily.count + stmt.excluded["count"]},
    )
    await session.execute(stmt)


async def daily_usage(
    session: AsyncSession, tenant_ids: list[uuid.UUID] | None, start: date, end: date
) -> list[UsageDaily]:
    """Stored daily rows between ``start`` and ``end`` inclusive, for some tenants or (platform) all."""
    stmt = select(UsageDaily).where(UsageDaily.day >= start, UsageDaily.day <= end)
    if tenant_ids is not None:
        stmt = stmt.where(UsageDaily.tenant_id.in_(tenant_ids))
    stmt = stmt.order_by(UsageDaily.tenant_id, UsageDaily.day, UsageDaily.metric)
    return list((await session.scalars(stmt)).all())


def combine(
    stored: Iterable[UsageDaily], pending: Mapping[tuple[date, str], int], start: date, end: date
) -> dict[tuple[date, str], int]:
    """Counts per (day, metric): stored rows plus a process's unflushed ones, from ``start`` to ``end``."""
    counts: Counter[tuple[date, str]] = Counter()
    for row in stored:
        if start <= row.day <= end:
            counts[(row.day, row.metric)] += row.count
    for (day, metric), amount in pending.items():
        if start <= day <= end:
            counts[(day, metric)] += amount
    return dict(sorted(counts.items()))


def totals(counts: Mapping[tuple[date, str], int]) -> dict[str, int]:
    """Sum per metric over the period; every known metric is present (0 when unused)."""
    summed: dict[str, int] = dict.fromkeys(METRICS, 0)
    for (_day, metric), amount in counts.items():
        summed[metric] = summed.get(metric, 0) + amount
    return summed


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One line of a billing export: a tenant's count of one metric on one day."""

    tenant_id: uuid.UUID
    tenant_slug: str
    plan_tier: str
    day: date
    metric: str
    count: int


EXPORT_COLUMNS: tuple[str, ...] = ("tenant_id", "tenant_slug", "plan_tier", "day", "metric", "count")


async def export_rows(
    session: AsyncSession, tenant_id: uuid.UUID | None, start: date, end: date
) -> list[ExportRow]:
    """Stored daily rows between ``start`` and ``end`` inclusive, with each tenant's slug and current plan.

    ``tenant_id`` None exports every tenant; on PostgreSQL the caller must have set the platform scope.
    """
    stmt = (
        select(
            UsageDaily.tenant_id,
            Tenant.slug,
            Tenant.plan_tier,
            UsageDaily.day,
            UsageDaily.metric,
            UsageDaily.count,
        )
        .join(Tenant, Tenant.id == UsageDaily.tenant_id)
        .where(UsageDaily.day >= start, UsageDaily.day <= end)
    )
    if tenant_id is not None:
        stmt = stmt.where(UsageDaily.tenant_id == tenant_id)
    stmt = stmt.order_by(Tenant.slug, UsageDaily.day, UsageDaily.metric)
    return [ExportRow(*row) for row in await session.execute(stmt)]
