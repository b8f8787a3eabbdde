"""Page/limit/total pagination, one way for every list endpoint."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession


async def paged(session: AsyncSession, stmt: Select[Any], page: int, limit: int) -> tuple[list[Any], int]:
    """Rows ``(page - 1) * limit`` onwards of an ordered single-entity select, and the total count."""
    total = await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = await session.scalars(stmt.offset((page - 1) * limit).limit(limit))
    return list(rows.all()), int(total or 0)
