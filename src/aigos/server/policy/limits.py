"""The plan's limits on policies (``aigos.server.tenancy.plans.PolicyLimits``), checked where they apply.

Every refusal is ``POLICY_LIMIT_EXCEEDED`` naming the ``limit`` (``document_bytes``, ``rules_per_policy``,
``policies``, ``rules``, ``total_bytes``, ``drafts``, ``bundle_bytes``) with its ``max`` and the plan: 413
when the request itself is too large (one document, one simulation), 422 when the request is fine but the
tenant's policies would pass a total.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from aigos.server.errors import AigosError
from aigos.server.tenancy.plans import Plan


class PolicyTooLarge(AigosError):
    """One policy document or one simulation is larger than the plan allows."""

    status = 413
    code = "POLICY_LIMIT_EXCEEDED"
    title = "Policy limit exceeded"


class PolicyQuotaExceeded(AigosError):
    """The change would take the tenant's policies past a total the plan allows."""

    status = 422
    code = "POLICY_LIMIT_EXCEEDED"
    title = "Policy limit exceeded"


def document_size(document: Mapping[str, Any]) -> int:
    """A policy document's size as limits count it: its compact JSON, in bytes."""
    return len(orjson.dumps(document))


def check_document(plan: Plan, document: Mapping[str, Any], pointer: str = "") -> int:
    """Refuse a document with more rules or bytes than the plan allows; returns its size."""
    limits = plan.policy
    rules = len(document.get("rules") or ())
    if rules > limits.rules_per_policy:
        raise _too_large(plan, "rules_per_policy", limits.rules_per_policy, f"{pointer}/rules has {rules}")
    size = document_size(document)
    if size > limits.document_bytes:
        raise _too_large(
            plan, "document_bytes", limits.document_bytes, f"{pointer or 'the policy'} is {size}"
        )
    return size


def check_drafts(plan: Plan, drafts: int) -> None:
    """Refuse a simulation with more draft policies than the plan allows."""
    if drafts > plan.policy.drafts:
        raise _too_large(plan, "drafts", plan.policy.drafts, f"/policies has {drafts}")


class Totals(NamedTuple):
    """What a tenant's policies hold together (as the plan's totals name them)."""

    policies: int
    rules: int
    total_bytes: int

    def plus(self, rules: int, size: int) -> Totals:
        """These totals with one more policy of ``rules`` rules and ``size`` bytes."""
        return Totals(self.policies + 1, self.rules + rules, self.total_bytes + size)


def check_totals(plan: Plan, after: Totals, before: Totals | None = None) -> None:
    """Refuse a change that leaves the tenant's policies (``after``) past a total of the plan.

    A tenant already past a total (its plan was lowered) may still make changes that do not add to it:
    ``before`` is what the tenant held before the change, when it replaces a policy.
    """
    limits = plan.policy
    for name in Totals._fields:
        found, allowed = getattr(after, name), getattr(limits, name)
        if found > allowed and (before is None or found > getattr(before, name)):
            raise PolicyQuotaExceeded(
                f"The {plan.name} plan allows {allowed:,} {_NAMES[name]} in a tenant's policies; this "
                f"change would make {found:,}.",
                limit=name,
                max=allowed,
                plan=plan.name,
            )


def bundle_too_large(size: int, maximum: int) -> PolicyQuotaExceeded:
    """The refusal of a bundle larger than any plan allows (policies saved before the limits existed)."""
    return PolicyQuotaExceeded(
        f"The policies that apply to this agent make a bundle of {size:,} bytes, more than {maximum:,}.",
        limit="bundle_bytes",
        max=maximum,
    )


_NAMES = {
    "policies": "policies",
    "rules": "rules",
    "total_bytes": "bytes",
    "rules_per_policy": "rules per policy",
    "document_bytes": "bytes per policy document",
    "drafts": "draft policies per simulation",
}


def _too_large(plan: Plan, name: str, allowed: int, found: str) -> PolicyTooLarge:
    return PolicyTooLarge(
        f"The {plan.name} plan allows {allowed:,} {_NAMES[name]}; {found}.",
        limit=name,
        max=allowed,
        plan=plan.name,
    )
