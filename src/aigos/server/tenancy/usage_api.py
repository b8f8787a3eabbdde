"""Routes of the tenancy context: usage."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from aigos.server.db.database import set_platform_scope
from aigos.server.db.types import utcnow
from aigos.server.deps import SessionDep, UsageDep
from aigos.server.errors import Forbidden, ValidationFailed
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.tenancy import usage
from aigos.server.tenancy.deps import require, require_tenant
from aigos.server.tenancy.plans import plan_of
from aigos.server.tenancy.schemas import UsageDay, UsageOut

router = APIRouter(prefix="/v1", tags=["tenancy"], route_class=ValidatedRoute)

#: The longest period one request may ask for, in days (both ends included).
MAX_PERIOD_DAYS = 366

ExportFormat = Literal["json", "csv"]
Start = Annotated[
    date | None,
    Query(description="First day (UTC, `YYYY-MM-DD`, included); default: the first day of `end`'s month."),
]
End = Annotated[date | None, Query(description="Last day (UTC, `YYYY-MM-DD`, included); default: today.")]


class UsageExportRow(BaseModel):
    """One tenant's count of one metric on one UTC day."""

    tenant_id: uuid.UUID
    tenant_slug: str
    plan_tier: str
    day: date
    metric: str
    count: int


class UsageExport(BaseModel):
    """Usage rows for a billing system; ``plan_tier`` is each tenant's plan at export time."""

    start: date
    end: date
    generated_at: datetime
    rows: list[UsageExportRow]


def period(start: date | None, end: date | None) -> tuple[date, date]:
    """The period asked for, defaults filled in; 400 ``VALIDATION_FAILED`` if it is backwards or too long.

    Without parameters the period is the current UTC month up to today.
    """
    end = end or utcnow().date()
    start = start or end.replace(day=1)
    if end < start:
        raise ValidationFailed(
            "query:end: must not be before start",
            errors=[{"pointer": "query:end", "detail": "must not be before start"}],
        )
    if (end - start).days + 1 > MAX_PERIOD_DAYS:
        detail = f"the period may span at most {MAX_PERIOD_DAYS} days"
        raise ValidationFailed(
            f"query:start: {detail}", errors=[{"pointer": "query:start", "detail": detail}]
        )
    return start, end


@router.get("/usage", response_model=UsageOut, summary="Get usage")
async def get_usage(
    meter: UsageDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require_tenant("usage:read"))],
    start: Start = None,
    end: End = None,
) -> UsageOut:
    """The tenant's usage per UTC day and metric, with totals and the plan's limits.

    Includes counts this server has not written to the database yet (this request among them); counts
    buffered by other replicas appear once they flush (every `AIGOS_USAGE_FLUSH_SECONDS`). At most
    366 days per request.
    """
    assert principal.tenant_id is not None
    first, last = period(start, end)
    stored = await usage.daily_usage(session, [principal.tenant_id], first, last)
    counts = usage.combine(stored, meter.pending(principal.tenant_id), first, last)
    plan = plan_of(principal.plan_tier)
    return UsageOut(
        tenant_id=principal.tenant_id,
        plan_tier=plan.name,
        start=first,
        end=last,
        totals=usage.totals(counts),
        daily=[UsageDay(day=day, metric=metric, count=n) for (day, metric), n in counts.items()],
        limits={
            "max_agents": plan.max_agents,
            "max_api_keys": plan.max_api_keys,
            "max_members": plan.max_members,
            "tenant_rpm": plan.tenant_rpm,
            "tenant_rph": plan.tenant_rph,
        },
    )


@router.get(
    "/usage/export",
    response_model=UsageExport,
    summary="Export usage",
    responses={
        200: {
            "description": "JSON by default; with `format=csv`, a CSV attachment with a header line.",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def export_usage(
    meter: UsageDep,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require("usage:read"))],
    start: Start = None,
    end: End = None,
    fmt: Annotated[ExportFormat, Query(alias="format", description="`json` or `csv`.")] = "json",
) -> UsageExport | Response:
    """Daily usage rows for billing: one per tenant, UTC day and metric, with the tenant's slug and plan.

    A tenant's API key exports that tenant; the platform-admin token exports every tenant. This server's
    buffered counts are written first, so they are included; other replicas' appear once they flush.
    At most 366 days per request.
    """
    if principal.tenant_id is None and not principal.is_platform:
        raise Forbidden("Use a tenant's API key or the platform-admin token.", code="TENANT_REQUIRED")
    first, last = period(start, end)
    await meter.flush()
    if principal.tenant_id is None:
        await set_platform_scope(session)
    rows = await usage.export_rows(session, principal.tenant_id, first, last)
    if fmt == "csv":
        return Response(
            content=_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="aigos-usage-{first}-{last}.csv"'},
        )
    return UsageExport(
        start=first,
        end=last,
        generated_at=utcnow(),
        rows=[
            UsageExportRow(
                tenant_id=row.tenant_id,
                tenant_slug=row.tenant_slug,
                plan_tier=row.plan_tier,
                day=row.day,
                metric=row.metric,
                count=row.count,
            )
            for row in rows
        ],
    )


def _csv(rows: list[usage.ExportRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(usage.EXPORT_COLUMNS)
    for row in rows:
        writer.writerow(
            [row.tenant_id, row.tenant_slug, row.plan_tier, row.day.isoformat(), row.metric, row.count]
        )
    return out.getvalue()
