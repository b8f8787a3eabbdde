"""Plan tiers and what each allows. Limits are enforced with ``PLAN_LIMIT_EXCEEDED``."""

from __future__ import annotations

from dataclasses import dataclass

from aigos.server.errors import Forbidden


@dataclass(frozen=True, slots=True)
class Plan:
    """One tier. ``None`` means unlimited."""

    name: str
    max_agents: int | None
    max_api_keys: int | None
    max_members: int | None
    #: Requests per minute and per hour for the whole tenant, across all its keys and all replicas.
    tenant_rpm: int
    tenant_rph: int


PLANS: dict[str, Plan] = {
    "free": Plan("free", max_agents=10, max_api_keys=5, max_members=3, tenant_rpm=300, tenant_rph=5_000),
    "pro": Plan("pro", max_agents=500, max_api_keys=50, max_members=50, tenant_rpm=3_000, tenant_rph=100_000),
    "enterprise": Plan(
        "enterprise",
        max_agents=None,
        max_api_keys=None,
        max_members=None,
        tenant_rpm=30_000,
        tenant_rph=1_000_000,
    ),
}
DEFAULT_PLAN = "free"


def plan_of(tier: str | None) -> Plan:
    """The plan named ``tier`` (unknown or missing tiers get the default plan)."""
    return PLANS.get(tier or DEFAULT_PLAN, PLANS[DEFAULT_PLAN])


def enforce_limit(plan: Plan, resource: str, current: int) -> None:
    """Refuse adding one more ``resource`` (``agents``, ``api_keys``, ``members``) past the plan's limit."""
    limit: int | None = getattr(plan, f"max_{resource}")
    if limit is not None and current >= limit:
        raise Forbidden(
            f"The {plan.name} plan allows {limit} {resource.replace('_', ' ')}; upgrade it to add more.",
            code="PLAN_LIMIT_EXCEEDED",
            plan=plan.name,
            resource=resource,
            limit=limit,
        )
