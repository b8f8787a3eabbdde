"""Plan tiers and what each allows. Limits are enforced with ``PLAN_LIMIT_EXCEEDED`` (agents, keys, members)
and ``POLICY_LIMIT_EXCEEDED`` (policies: see ``PolicyLimits`` and ``aigos.server.policy.limits``)."""

from __future__ import annotations

from dataclasses import dataclass

from aigos.server.errors import Forbidden


@dataclass(frozen=True, slots=True)
class PolicyLimits:
    """What a tenant's policies may hold; sizes are of a policy's stored document (compact JSON)."""

    #: Policies at once (deleted ones do not count).
    policies: int
    #: Rules in all of the tenant's policies together: bounds compiling and each agent's selection.
    rules: int
    rules_per_policy: int
    document_bytes: int
    #: All of the tenant's documents together: bounds every bundle and each replica's memory.
    total_bytes: int
    #: Draft policies in one ``POST /v1/policies/simulate`` (each held to the limits of a saved one).
    drafts: int
    #: Versions kept per policy, the newest; older ones are pruned (the audit log keeps every change).
    versions_kept: int


_KIB = 1024


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
    policy: PolicyLimits
    #: AIGRC asset cards at once (each at most ``aigos.core.assetcard.MAX_CARD_BYTES``).
    max_asset_cards: int | None = 20


PLANS: dict[str, Plan] = {
    "free": Plan(
        "free",
        max_agents=10,
        max_api_keys=5,
        max_members=3,
        tenant_rpm=300,
        tenant_rph=5_000,
        policy=PolicyLimits(
            policies=50,
            rules=1_000,
            rules_per_policy=200,
            document_bytes=64 * _KIB,
            total_bytes=1024 * _KIB,
            drafts=10,
            versions_kept=20,
        ),
    ),
    "pro": Plan(
        "pro",
        max_agents=500,
        max_api_keys=50,
        max_members=50,
        tenant_rpm=3_000,
        tenant_rph=100_000,
        policy=PolicyLimits(
            policies=500,
            rules=5_000,
            rules_per_policy=500,
            document_bytes=256 * _KIB,
            total_bytes=4096 * _KIB,
            drafts=25,
            versions_kept=50,
        ),
        max_asset_cards=500,
    ),
    "enterprise": Plan(
        "enterprise",
        max_agents=None,
        max_api_keys=None,
        max_members=None,
        tenant_rpm=30_000,
        tenant_rph=1_000_000,
        policy=PolicyLimits(
            # Room for the reference workload of bench/policy.py (1,000 agents with 50 rules each).
            policies=5_000,
            rules=50_000,
            rules_per_policy=500,
            document_bytes=512 * _KIB,
            total_bytes=32_768 * _KIB,
            drafts=50,
            versions_kept=100,
        ),
        max_asset_cards=5_000,
    ),
}
#: The largest bundle any plan's policies make (all of a tenant's documents, with room for the agent).
MAX_BUNDLE_BYTES = max(plan.policy.total_bytes for plan in PLANS.values()) + 64 * _KIB
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
