"""The pure policy evaluator: the seed's chain as a table, budgets, validation, traces, bundles, properties.

Every decision in the table is evaluated twice, once with ``spent`` and once without it and then finished
with ``Decision.with_spent`` (the server's path), and both must agree.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigos.core import globs
from aigos.core import policy as core
from aigos.core.policy import (
    CAPABILITY_BUDGET,
    PERIODS,
    RULES_PER_STEP,
    STAGES,
    Budget,
    Bundle,
    Code,
    Decision,
    PolicyError,
    PolicySet,
    Request,
    Subject,
    WouldDeny,
    bundle_payload,
    compile_policy,
    evaluate,
    labels_of,
    settle,
    validate,
)

AGENT = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"
#: A Wednesday, 12:30 in Paris, 06:30 in New York, 19:30 in Tokyo.
AT = datetime(2024, 6, 12, 10, 30, tzinfo=UTC)
PARIS, NEW_YORK, TOKYO = ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo")
DOMAIN_CAPS = ("*.company.com", "company.com", "evil.com", "partner.io", "good.com")

Doc = dict[str, Any]


def subject(
    agent_id: str = AGENT,
    *,
    status: str = "active",
    tools: Sequence[str] = ("web_*", "sql"),
    domains: Sequence[str] = DOMAIN_CAPS,
    max_budget: float | None = None,
    agent_type: str | None = "assistant",
    env: str | None = "prod",
    metadata: Mapping[str, Any] | None = None,
) -> Subject:
    """An agent as its token and record describe it."""
    return Subject.of(
        agent_id,
        status=status,
        capabilities={"tools": list(tools), "domains": list(domains), "max_budget": max_budget},
        agent_type=agent_type,
        owner="alice",
        deployment_env=env,
        metadata=metadata,
    )


def request(
    action: str = "read", resource: str = "db/users", *, at: datetime = AT, **context: Any
) -> Request:
    """A request in the check API's shape (``tool``, ``domain``, ``estimated_cost`` in the context)."""
    return Request.of(action, resource, context, at=at)


def policy(pid: str, *rules: Doc, **fields: Any) -> Doc:
    """A stored policy document."""
    return {"id": pid, "name": pid, **fields, "rules": list(rules)}


def rule(
    rid: str,
    effect: str = "deny",
    *,
    actions: Sequence[str] = ("*",),
    resources: Sequence[str] = ("*",),
    priority: int = 0,
    **conditions: Any,
) -> Doc:
    """A rule of a policy document; keyword arguments are its conditions."""
    spec: Doc = {
        "id": rid,
        "effect": effect,
        "actions": list(actions),
        "resources": list(resources),
        "priority": priority,
    }
    if conditions:
        spec["conditions"] = conditions
    return spec


def cap_key(agent_id: str = AGENT) -> str:
    """The counter of an agent's capability budget."""
    return f"{CAPABILITY_BUDGET}:{agent_id}:all"


def key(pid: str, owner: str = AGENT, bucket: str = "all") -> str:
    """The counter of a policy's budget."""
    return f"policy:{pid}:{owner}:{bucket}"


def finish(policies: PolicySet, who: Subject, what: Request, spent: Mapping[str, float]) -> Decision:
    """The server's path: evaluate without ``spent``, then settle the budgets the decision still needs."""
    pending = evaluate(policies, who, what)
    return pending.with_spent(spent) if pending.needs_budget else pending


def verdict(decision: Decision) -> tuple[bool, str | None, str | None, str | None]:
    """What the table compares."""
    return decision.allowed, decision.code, decision.stage, decision.matched_rule


# -- the chain as a table ----------------------------------------------------------------------------

DENIED = False
ALLOWED = True


def case(
    description: str,
    policies: list[Doc],
    who: Subject,
    what: Request,
    allowed: bool,
    code: str | None = None,
    stage: str | None = None,
    matched_rule: str | None = None,
    spent: Mapping[str, float] | None = None,
) -> Any:
    """One row: (description, policies, subject, request, allowed, code, stage, matched rule[, spent])."""
    return pytest.param(policies, who, what, allowed, code, stage, matched_rule, spent or {}, id=description)


SINK = [policy("sink", rule("deny-all"), domains={"deny": ["evil.com"]}, budget={"limit": 1})]
INHERIT = [
    policy("tenant", rule("may-all", "allow")),
    policy(
        "crawlers",
        rule("crawlers-read-only", actions=["write", "delete"]),
        target={"kind": "selector", "selector": {"agent_type": ["crawler"]}},
    ),
    policy(
        "red-team",
        rule("red-no-prod", resources=["prod/*"]),
        target={"kind": "selector", "selector": {"labels": {"team": "red"}}},
    ),
    policy(
        "this-agent", rule("agent-no-delete", actions=["delete"]), target={"kind": "agent", "agent_id": AGENT}
    ),
]
NIGHT = [
    policy("night", rule("no-night", time={"start": "22:00", "end": "06:00", "timezone": "Europe/Paris"}))
]
OFFICE = [
    policy(
        "office",
        rule(
            "office-hours",
            "allow",
            time={
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": "09:00",
                "end": "17:00",
                "timezone": "America/New_York",
            },
        ),
        default_effect="deny",
    )
]
WEEKEND_TOKYO = [
    policy("weekend", rule("no-weekend", time={"days": ["sat", "sun"], "timezone": "Asia/Tokyo"}))
]


def cost_rule(**bounds: float) -> list[Doc]:
    """A policy denying requests whose cost is within ``bounds``."""
    return [policy("cost", rule("cost-bound", cost=bounds))]


CHAIN = [
    # 1. kill switch
    case(
        "terminated agent", [], subject(status="terminated"), request(), DENIED, "TERMINATED", "kill_switch"
    ),
    case("paused agent", [], subject(status="paused"), request(), DENIED, "PAUSED", "kill_switch"),
    case("suspended agent", [], subject(status="suspended"), request(), DENIED, "TERMINATED", "kill_switch"),
    case("archived agent", [], subject(status="archived"), request(), DENIED, "TERMINATED", "kill_switch"),
    case("active agent without policies", [], subject(), request(), ALLOWED),
    # 2. capability
    case(
        "tool outside capabilities",
        [],
        subject(),
        request(tool="email"),
        DENIED,
        "CAPABILITY_DENIED",
        "capability",
    ),
    case("tool capability glob, any case", [], subject(), request(tool="WEB_Search"), ALLOWED),
    case("exact tool capability", [], subject(), request(tool="sql"), ALLOWED),
    case(
        "agent without tool capabilities",
        [],
        subject(tools=()),
        request(tool="sql"),
        DENIED,
        "CAPABILITY_DENIED",
        "capability",
    ),
    case("no tool or domain asked, none needed", [], subject(tools=(), domains=()), request(), ALLOWED),
    case(
        "domain outside capabilities",
        [],
        subject(),
        request(domain="other.org"),
        DENIED,
        "CAPABILITY_DENIED",
        "capability",
    ),
    case(
        "domain capability covers sub-sub-domains",
        [],
        subject(),
        request(domain="https://a.b.company.com/x"),
        ALLOWED,
    ),
    case(
        "domain capability spares evilcompany.com",
        [],
        subject(domains=("*.company.com",)),
        request(domain="evilcompany.com"),
        DENIED,
        "CAPABILITY_DENIED",
        "capability",
    ),
    case(
        "wildcard domain capability excludes the base domain",
        [],
        subject(domains=("*.company.com",)),
        request(domain="company.com"),
        DENIED,
        "CAPABILITY_DENIED",
        "capability",
    ),
    case(
        "domain capability on a URL with credentials and port",
        [],
        subject(),
        request(domain="https://u:p@API.Company.com:8443/v1"),
        ALLOWED,
    ),
    # 3. budget
    case(
        "capability budget fits exactly",
        [],
        subject(max_budget=10),
        request(estimated_cost=1),
        ALLOWED,
        spent={cap_key(): 9},
    ),
    case(
        "capability budget over by a cent",
        [],
        subject(max_budget=10),
        request(estimated_cost=1.01),
        DENIED,
        "BUDGET_EXCEEDED",
        "budget",
        spent={cap_key(): 9},
    ),
    case(
        "policy budget tighter than the capability",
        [policy("b", budget={"limit": 5})],
        subject(max_budget=100),
        request(estimated_cost=6),
        DENIED,
        "BUDGET_EXCEEDED",
        "budget",
    ),
    case(
        "capability budget tighter than the policy",
        [policy("b", budget={"limit": 100})],
        subject(max_budget=5),
        request(estimated_cost=6),
        DENIED,
        "BUDGET_EXCEEDED",
        "budget",
    ),
    case(
        "policy budget partly spent, fits",
        [policy("b", budget={"limit": 5})],
        subject(),
        request(estimated_cost=0.5),
        ALLOWED,
        spent={key("b"): 4.5},
    ),
    case(
        "policy budget partly spent, over",
        [policy("b", budget={"limit": 5})],
        subject(),
        request(estimated_cost=0.51),
        DENIED,
        "BUDGET_EXCEEDED",
        "budget",
        spent={key("b"): 4.5},
    ),
    case(
        "free request on a budget used up exactly",
        [policy("b", budget={"limit": 5})],
        subject(),
        request(),
        ALLOWED,
        spent={key("b"): 5},
    ),
    case(
        "shared budget spent by other agents",
        [policy("b", budget={"limit": 5, "scope": "shared"})],
        subject(),
        request(estimated_cost=0.01),
        DENIED,
        "BUDGET_EXCEEDED",
        "budget",
        spent={key("b", "*"): 5},
    ),
    case(
        "per-agent budget ignores another agent's spend",
        [policy("b", budget={"limit": 5})],
        subject(),
        request(estimated_cost=1),
        ALLOWED,
        spent={key("b", OTHER): 5, key("b", "*"): 5},
    ),
    case(
        "daily budget: yesterday's spend does not count",
        [policy("b", budget={"limit": 5, "period": "daily"})],
        subject(),
        request(estimated_cost=1),
        ALLOWED,
        spent={key("b", bucket="2024-06-11"): 5},
    ),
    case(
        "daily budget: today's spend counts",
        [policy("b", budget={"limit": 5, "period": "daily"})],
        subject(),
        request(estimated_cost=1),
        DENIED,
        "BUDGET_EXCEEDED",
        "budget",
        spent={key("b", bucket="2024-06-12"): 5},
    ),
    case(
        "monthly budget: this month's spend counts",
        [policy("b", budget={"limit": 5, "period": "monthly"})],
        subject(),
        request(estimated_cost=1),
        DENIED,
        "BUDGET_EXCEEDED",
        "budget",
        spent={key("b", bucket="2024-06"): 4.5, key("b", bucket="2024-05"): 0},
    ),
    # 4. domain patterns
    case(
        "domain on the deny list",
        [policy("d", domains={"deny": ["evil.com"]})],
        subject(),
        request(domain="EVIL.com."),
        DENIED,
        "RESOURCE_DENIED",
        "domain",
    ),
    case(
        "domain on a wildcard deny list",
        [policy("d", domains={"deny": ["*.company.com"]})],
        subject(),
        request(domain="a.b.company.com"),
        DENIED,
        "RESOURCE_DENIED",
        "domain",
    ),
    case(
        "wildcard deny list spares the base domain",
        [policy("d", domains={"deny": ["*.company.com"]})],
        subject(),
        request(domain="company.com"),
        ALLOWED,
    ),
    case(
        "domain outside the allow list",
        [policy("d", domains={"allow": ["*.company.com"]})],
        subject(),
        request(domain="partner.io"),
        DENIED,
        "RESOURCE_NOT_ALLOWED",
        "domain",
    ),
    case(
        "domain on the allow list",
        [policy("d", domains={"allow": ["*.company.com"]})],
        subject(),
        request(domain="api.company.com"),
        ALLOWED,
    ),
    case(
        "deny beats allow within a policy",
        [policy("d", domains={"allow": ["*.company.com"], "deny": ["secret.company.com"]})],
        subject(),
        request(domain="secret.company.com"),
        DENIED,
        "RESOURCE_DENIED",
        "domain",
    ),
    case(
        "a deny list beats a higher-priority allow list",
        [
            policy("allow-list", priority=10, domains={"allow": ["*.company.com"]}),
            policy("deny-list", domains={"deny": ["secret.company.com"]}),
        ],
        subject(),
        request(domain="secret.company.com"),
        DENIED,
        "RESOURCE_DENIED",
        "domain",
    ),
    case(
        "allow lists of two policies both apply",
        [
            policy("wide", domains={"allow": ["*.company.com", "partner.io"]}),
            policy("narrow", domains={"allow": ["partner.io"]}),
        ],
        subject(),
        request(domain="api.company.com"),
        DENIED,
        "RESOURCE_NOT_ALLOWED",
        "domain",
    ),
    case(
        "no domain asked: the allow list is not consulted",
        [policy("d", domains={"allow": ["*.company.com"]})],
        subject(),
        request(),
        ALLOWED,
    ),
    # 5. custom rules
    case(
        "deny rule on action and resource",
        [policy("p", rule("no-delete", actions=["delete"], resources=["db/*"]))],
        subject(),
        request("delete", "db/users"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-delete",
    ),
    case(
        "deny rule, other action",
        [policy("p", rule("no-delete", actions=["delete"], resources=["db/*"]))],
        subject(),
        request("read", "db/users"),
        ALLOWED,
    ),
    case(
        "deny rule, other resource",
        [policy("p", rule("no-delete", actions=["delete"], resources=["db/*"]))],
        subject(),
        request("delete", "files/a.txt"),
        ALLOWED,
    ),
    case(
        "actions and resources ignore case",
        [policy("p", rule("no-delete", actions=["Delete"], resources=["db/*"]))],
        subject(),
        request("DELETE", "DB/Users"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-delete",
    ),
    case(
        "action glob",
        [policy("p", rule("no-web", actions=["web_*"]))],
        subject(),
        request("web_fetch"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-web",
    ),
    case(
        "action glob with ?",
        [policy("p", rule("no-write", actions=["wr?te"]))],
        subject(),
        request("write"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-write",
    ),
    case(
        "allowing rule is reported",
        [policy("p", rule("may-read", "allow", actions=["read"]))],
        subject(),
        request(),
        ALLOWED,
        matched_rule="may-read",
    ),
    case(
        "highest-priority allowing rule is reported",
        [policy("p", rule("low", "allow", priority=1), rule("high", "allow", priority=5))],
        subject(),
        request(),
        ALLOWED,
        matched_rule="high",
    ),
    # short-circuit: the earliest failing stage is reported
    case(
        "paused beats every other failure",
        SINK,
        subject(status="paused"),
        request(tool="email", domain="evil.com", estimated_cost=5),
        DENIED,
        "PAUSED",
        "kill_switch",
    ),
    case(
        "capability beats budget, domain and rules",
        SINK,
        subject(),
        request(tool="email", domain="evil.com", estimated_cost=5),
        DENIED,
        "CAPABILITY_DENIED",
        "capability",
    ),
    case(
        "budget beats domain and rules",
        SINK,
        subject(),
        request(tool="web_search", domain="evil.com", estimated_cost=5),
        DENIED,
        "BUDGET_EXCEEDED",
        "budget",
    ),
    case(
        "domain beats rules",
        SINK,
        subject(),
        request(tool="web_search", domain="evil.com", estimated_cost=0.5),
        DENIED,
        "RESOURCE_DENIED",
        "domain",
    ),
    case(
        "rules come last",
        SINK,
        subject(),
        request(tool="web_search", domain="company.com", estimated_cost=0.5),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "deny-all",
    ),
    # precedence
    case(
        "tenant deny beats agent allow",
        [
            policy("tenant", rule("no-delete", actions=["delete"])),
            policy(
                "agent",
                rule("agent-may-delete", "allow", actions=["delete"], priority=1000),
                priority=1000,
                target={"kind": "agent", "agent_id": AGENT},
            ),
        ],
        subject(),
        request("delete"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-delete",
    ),
    case(
        "deny beats a higher-priority allow",
        [policy("p", rule("may-all", "allow", priority=100), rule("no-delete", actions=["delete"]))],
        subject(),
        request("delete"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-delete",
    ),
    case(
        "the higher-priority deny rule is reported",
        [policy("p", rule("low", priority=1), rule("high", priority=5))],
        subject(),
        request(),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "high",
    ),
    case(
        "the higher-priority policy's deny is reported",
        [policy("a", rule("a-deny")), policy("b", rule("b-deny"), priority=10)],
        subject(),
        request(),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "b-deny",
    ),
    case(
        "equal priorities: document order",
        [policy("p", rule("first"), rule("second"))],
        subject(),
        request(),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "first",
    ),
    # inheritance: tenant -> selector -> agent -> action
    case(
        "tenant policy applies to every agent",
        INHERIT,
        subject(OTHER),
        request(),
        ALLOWED,
        matched_rule="may-all",
    ),
    case(
        "selector policy applies to selected agents",
        INHERIT,
        subject(agent_type="crawler"),
        request("write"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "crawlers-read-only",
    ),
    case(
        "selector policy spares other agents",
        INHERIT,
        subject(agent_type="assistant"),
        request("write"),
        ALLOWED,
        matched_rule="may-all",
    ),
    case(
        "selector on a metadata label",
        INHERIT,
        subject(metadata={"team": "red"}),
        request("read", "prod/db"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "red-no-prod",
    ),
    case(
        "selector on a nested metadata label",
        INHERIT,
        subject(metadata={"labels": {"team": "red"}}),
        request("read", "prod/db"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "red-no-prod",
    ),
    case(
        "label selector spares other labels",
        INHERIT,
        subject(metadata={"team": "blue"}),
        request("read", "prod/db"),
        ALLOWED,
        matched_rule="may-all",
    ),
    case(
        "agent policy applies to its agent",
        INHERIT,
        subject(),
        request("delete"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "agent-no-delete",
    ),
    case(
        "agent policy spares other agents",
        INHERIT,
        subject(OTHER),
        request("delete"),
        ALLOWED,
        matched_rule="may-all",
    ),
    case(
        "action rules apply to their actions only",
        INHERIT,
        subject(),
        request("read"),
        ALLOWED,
        matched_rule="may-all",
    ),
    # default effect deny
    case(
        "default deny without an allowing rule",
        [policy("strict", rule("may-read", "allow", actions=["read"]), default_effect="deny")],
        subject(),
        request("write"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
    ),
    case(
        "default deny with an allowing rule",
        [policy("strict", rule("may-read", "allow", actions=["read"]), default_effect="deny")],
        subject(),
        request("read"),
        ALLOWED,
        matched_rule="may-read",
    ),
    case(
        "another policy's rule satisfies a default deny",
        [
            policy("strict", default_effect="deny"),
            policy("grants", rule("grant-read", "allow", actions=["read"])),
        ],
        subject(),
        request("read"),
        ALLOWED,
        matched_rule="grant-read",
    ),
    case(
        "a matching deny wins under default deny",
        [
            policy(
                "strict",
                rule("may-read", "allow", actions=["read"]),
                rule("no-secrets", resources=["secret/*"]),
                default_effect="deny",
            )
        ],
        subject(),
        request("read", "secret/key"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-secrets",
    ),
    case(
        "a disabled default-deny policy is ignored",
        [policy("strict", default_effect="deny", enabled=False)],
        subject(),
        request(),
        ALLOWED,
    ),
    case(
        "default deny of a policy for another agent",
        [policy("strict", default_effect="deny", target={"kind": "agent", "agent_id": OTHER})],
        subject(),
        request(),
        ALLOWED,
    ),
    # dry run
    case(
        "dry-run deny rule does not deny",
        [policy("watch", rule("no-delete", actions=["delete"]), mode="dry_run")],
        subject(),
        request("delete"),
        ALLOWED,
    ),
    case(
        "dry-run domain deny list",
        [policy("watch", domains={"deny": ["evil.com"]}, mode="dry_run")],
        subject(),
        request(domain="evil.com"),
        ALLOWED,
    ),
    case(
        "dry-run domain allow list",
        [policy("watch", domains={"allow": ["partner.io"]}, mode="dry_run")],
        subject(),
        request(domain="evil.com"),
        ALLOWED,
    ),
    case(
        "dry-run default deny",
        [policy("watch", default_effect="deny", mode="dry_run")],
        subject(),
        request(),
        ALLOWED,
    ),
    case(
        "dry-run budget",
        [policy("watch", budget={"limit": 1}, mode="dry_run")],
        subject(),
        request(estimated_cost=5),
        ALLOWED,
        spent={key("watch"): 10},
    ),
    case(
        "dry-run allow does not satisfy an enforced default deny",
        [policy("strict", default_effect="deny"), policy("watch", rule("grant", "allow"), mode="dry_run")],
        subject(),
        request(),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
    ),
    case(
        "an enforced deny is reported past a higher-priority dry-run deny",
        [policy("watch", rule("w-deny", priority=10), mode="dry_run"), policy("enforced", rule("e-deny"))],
        subject(),
        request(),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "e-deny",
    ),
    # conditions: tools, domains
    case(
        "tool condition, any case",
        [policy("p", rule("no-sql", tools=["sql"]))],
        subject(),
        request(tool="SQL"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-sql",
    ),
    case(
        "tool condition, other tool",
        [policy("p", rule("no-sql", tools=["sql"]))],
        subject(),
        request(tool="web_x"),
        ALLOWED,
    ),
    case(
        "tool condition needs a tool",
        [policy("p", rule("no-sql", tools=["sql"]))],
        subject(),
        request(),
        ALLOWED,
    ),
    case(
        "domain condition on a URL",
        [policy("p", rule("no-company", domains=["*.company.com"]))],
        subject(),
        request(domain="https://a.b.company.com/x"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-company",
    ),
    case(
        "domain condition spares the base domain",
        [policy("p", rule("no-company", domains=["*.company.com"]))],
        subject(),
        request(domain="company.com"),
        ALLOWED,
    ),
    case(
        "domain condition needs a domain",
        [policy("p", rule("no-company", domains=["*.company.com"]))],
        subject(),
        request(),
        ALLOWED,
    ),
    # conditions: cost bounds
    case("cost gt 5 at 5", cost_rule(gt=5), subject(), request(estimated_cost=5), ALLOWED),
    case(
        "cost gt 5 at 5.01",
        cost_rule(gt=5),
        subject(),
        request(estimated_cost=5.01),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "cost-bound",
    ),
    case(
        "cost gte 5 at 5",
        cost_rule(gte=5),
        subject(),
        request(estimated_cost=5),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "cost-bound",
    ),
    case("cost gte 5 at 4.99", cost_rule(gte=5), subject(), request(estimated_cost=4.99), ALLOWED),
    case(
        "cost lt 1 at 0.99",
        cost_rule(lt=1),
        subject(),
        request(estimated_cost=0.99),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "cost-bound",
    ),
    case("cost lt 1 at 1", cost_rule(lt=1), subject(), request(estimated_cost=1), ALLOWED),
    case(
        "cost lte 1 at 1",
        cost_rule(lte=1),
        subject(),
        request(estimated_cost=1),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "cost-bound",
    ),
    case("cost lte 1 at 1.01", cost_rule(lte=1), subject(), request(estimated_cost=1.01), ALLOWED),
    case(
        "cost range inside",
        cost_rule(gte=1, lt=2),
        subject(),
        request(estimated_cost=1.5),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "cost-bound",
    ),
    case("cost range at its open end", cost_rule(gte=1, lt=2), subject(), request(estimated_cost=2), ALLOWED),
    case("cost range, no cost given (0)", cost_rule(gte=1, lt=2), subject(), request(), ALLOWED),
    # conditions: time windows (22:00-06:00 Paris, CEST = UTC+2 in June, CET = UTC+1 in January)
    case(
        "night window, 23:30 Paris",
        NIGHT,
        subject(),
        request(at=datetime(2024, 6, 12, 21, 30, tzinfo=UTC)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-night",
    ),
    case(
        "night window, 05:59 Paris (after midnight)",
        NIGHT,
        subject(),
        request(at=datetime(2024, 6, 12, 3, 59, tzinfo=UTC)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-night",
    ),
    case(
        "night window ends at 06:00",
        NIGHT,
        subject(),
        request(at=datetime(2024, 6, 12, 4, 0, tzinfo=UTC)),
        ALLOWED,
    ),
    case(
        "night window starts at 22:00",
        NIGHT,
        subject(),
        request(at=datetime(2024, 6, 12, 20, 0, tzinfo=UTC)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-night",
    ),
    case(
        "night window, 21:59 Paris",
        NIGHT,
        subject(),
        request(at=datetime(2024, 6, 12, 19, 59, tzinfo=UTC)),
        ALLOWED,
    ),
    case(
        "night window, instant given in New York (20:30 Paris)",
        NIGHT,
        subject(),
        request(at=datetime(2024, 6, 12, 14, 30, tzinfo=NEW_YORK)),
        ALLOWED,
    ),
    case(
        "night window, instant given in Tokyo (22:30 Paris)",
        NIGHT,
        subject(),
        request(at=datetime(2024, 6, 13, 5, 30, tzinfo=TOKYO)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-night",
    ),
    case(
        "night window in winter time (20:30 UTC is 21:30 Paris)",
        NIGHT,
        subject(),
        request(at=datetime(2024, 1, 10, 20, 30, tzinfo=UTC)),
        ALLOWED,
    ),
    case(
        "night window in summer time (20:30 UTC is 22:30 Paris)",
        NIGHT,
        subject(),
        request(at=datetime(2024, 6, 12, 20, 30, tzinfo=UTC)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-night",
    ),
    case(
        "office hours, 09:30 New York (summer)",
        OFFICE,
        subject(),
        request(at=datetime(2024, 6, 12, 13, 30, tzinfo=UTC)),
        ALLOWED,
        matched_rule="office-hours",
    ),
    case(
        "office hours, 08:59 New York",
        OFFICE,
        subject(),
        request(at=datetime(2024, 6, 12, 12, 59, tzinfo=UTC)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
    ),
    case(
        "office hours end at 17:00",
        OFFICE,
        subject(),
        request(at=datetime(2024, 6, 12, 21, 0, tzinfo=UTC)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
    ),
    case(
        "office hours, 13:30 UTC is 08:30 in New York's winter",
        OFFICE,
        subject(),
        request(at=datetime(2024, 1, 10, 13, 30, tzinfo=UTC)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
    ),
    case(
        "office hours, 09:00 New York (winter)",
        OFFICE,
        subject(),
        request(at=datetime(2024, 1, 10, 14, 0, tzinfo=UTC)),
        ALLOWED,
        matched_rule="office-hours",
    ),
    case(
        "office hours on a Saturday",
        OFFICE,
        subject(),
        request(at=datetime(2024, 6, 15, 14, 0, tzinfo=UTC)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
    ),
    case(
        "weekend in Tokyo while it is Friday in UTC",
        WEEKEND_TOKYO,
        subject(),
        request(at=datetime(2024, 6, 14, 16, 0, tzinfo=UTC)),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-weekend",
    ),
    case(
        "Friday 23:00 in Tokyo",
        WEEKEND_TOKYO,
        subject(),
        request(at=datetime(2024, 6, 14, 14, 0, tzinfo=UTC)),
        ALLOWED,
    ),
    # conditions: agent selectors and context
    case(
        "agent condition selects",
        [policy("p", rule("no-prod-writes", actions=["write"], agent={"deployment_env": ["prod"]}))],
        subject(env="prod"),
        request("write"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-prod-writes",
    ),
    case(
        "agent condition spares",
        [policy("p", rule("no-prod-writes", actions=["write"], agent={"deployment_env": ["prod"]}))],
        subject(env="dev"),
        request("write"),
        ALLOWED,
    ),
    case(
        "agent condition on labels and type",
        [policy("p", rule("red-crawlers", agent={"agent_type": ["crawler"], "labels": {"team": "red"}}))],
        subject(agent_type="crawler", metadata={"team": "red"}),
        request(),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "red-crawlers",
    ),
    case(
        "agent condition needs every attribute",
        [policy("p", rule("red-crawlers", agent={"agent_type": ["crawler"], "labels": {"team": "red"}}))],
        subject(agent_type="assistant", metadata={"team": "red"}),
        request(),
        ALLOWED,
    ),
    case(
        "context condition, one of several values",
        [policy("p", rule("no-prod", context={"env": ["prod", "staging"]}))],
        subject(),
        request(env="staging"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "no-prod",
    ),
    case(
        "context condition, other value",
        [policy("p", rule("no-prod", context={"env": ["prod", "staging"]}))],
        subject(),
        request(env="dev"),
        ALLOWED,
    ),
    case(
        "context condition, key missing",
        [policy("p", rule("no-prod", context={"env": ["prod", "staging"]}))],
        subject(),
        request(),
        ALLOWED,
    ),
    case(
        "context condition, single value",
        [policy("p", rule("eu-only", context={"region": "eu"}))],
        subject(),
        request(region="eu"),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "eu-only",
    ),
    case(
        "context conditions on numbers compare their text",
        [policy("p", rule("tier", context={"tier": ["2", "3"]}))],
        subject(),
        request(tier=3),
        DENIED,
        "CUSTOM_DENIED",
        "custom",
        "tier",
    ),
]


@pytest.mark.parametrize(
    ("policies", "who", "what", "allowed", "code", "stage", "matched_rule", "spent"), CHAIN
)
def test_the_chain(
    policies: list[Doc],
    who: Subject,
    what: Request,
    allowed: bool,
    code: str | None,
    stage: str | None,
    matched_rule: str | None,
    spent: Mapping[str, float],
) -> None:
    compiled = PolicySet(1, policies)
    decided = evaluate(compiled, who, what, spent=spent)
    assert verdict(decided) == (allowed, code, stage, matched_rule)
    assert decided.budgets == ()  # nothing left to reserve once ``spent`` is known
    assert decided.allowed or decided.reason
    assert verdict(finish(compiled, who, what, spent)) == verdict(decided)


def test_the_table_covers_every_stage_and_code() -> None:
    rows = [param.values for param in CHAIN]
    codes = {values[4] for values in rows}
    stages = {values[5] for values in rows}
    assert codes >= {code.value for code in Code} - {"RATE_LIMITED"}
    assert stages >= set(STAGES)


# -- what a decision says ----------------------------------------------------------------------------


def test_a_denial_names_its_policy_and_reason() -> None:
    policies = PolicySet(
        1,
        [
            policy("p", {"id": "r", "effect": "deny", "actions": ["delete"], "description": "No deletes."}),
            policy("d", domains={"deny": ["evil.com"]}),
        ],
    )
    denied = evaluate(policies, subject(), request("delete"))
    assert (denied.policy_id, denied.reason) == ("p", "No deletes.")
    by_domain = evaluate(policies, subject(), request(domain="evil.com"))
    assert by_domain.policy_id == "d"
    assert "evil.com" in (by_domain.reason or "")
    assert by_domain.to_json() == {
        "allowed": False,
        "code": "RESOURCE_DENIED",
        "stage": "domain",
        "reason": by_domain.reason,
        "matched_rule": None,
        "policy_id": "d",
        "budget_remaining": None,
        "would_deny": [],
        "trace": None,
    }


def test_dry_run_reports_what_it_would_deny() -> None:
    watch = policy(
        "watch",
        rule("no-delete", actions=["delete"]),
        domains={"deny": ["evil.com"]},
        budget={"limit": 1},
        default_effect="deny",
        mode="dry_run",
    )
    policies = PolicySet(1, [watch])
    decided = evaluate(policies, subject(), request("delete", domain="evil.com", estimated_cost=2), spent={})
    assert decided.allowed
    assert decided.budget_remaining is None  # dry-run budgets leave no room to report
    assert [(item.policy_id, item.rule, item.code) for item in decided.would_deny] == [
        ("watch", None, "BUDGET_EXCEEDED"),
        ("watch", None, "RESOURCE_DENIED"),
        ("watch", "no-delete", "CUSTOM_DENIED"),
        ("watch", None, "CUSTOM_DENIED"),
    ]
    assert decided.to_json()["would_deny"][2] == {
        "policy_id": "watch",
        "rule": "no-delete",
        "code": "CUSTOM_DENIED",
        "reason": "Denied by rule 'no-delete'.",
    }
    pending = evaluate(policies, subject(), request("delete", domain="evil.com", estimated_cost=2))
    assert pending.allowed
    assert pending.needs_budget
    settled = pending.with_spent({})
    assert settled.allowed
    assert sorted(settled.would_deny, key=repr) == sorted(decided.would_deny, key=repr)
    quiet = evaluate(policies, subject(), request("read", domain="company.com", estimated_cost=0.5), spent={})
    assert [item.code for item in quiet.would_deny] == ["CUSTOM_DENIED"]  # only the default deny


def test_a_dry_run_default_deny_counts_its_own_allow_rules() -> None:
    watch = policy(
        "watch", rule("may-read", "allow", actions=["read"]), default_effect="deny", mode="dry_run"
    )
    decided = evaluate(PolicySet(1, [watch]), subject(), request("read"))
    enforced = evaluate(PolicySet(1, [{**watch, "mode": "enforce"}]), subject(), request("read"))
    assert enforced.allowed  # enforced, the policy allows the request...
    assert decided.would_deny == ()  # ...so in dry run it must not report a denial


# -- budgets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "spent", "cost", "fits"),
    [
        (10, 9, 1, True),
        (10, 9, 1.01, False),
        (10, 0, 10, True),
        (10, 0, 10.0000000005, True),  # within the 1e-9 slack
        (10, 0, 10.00000001, False),
        (0.3, 0.2, 0.1, True),  # 0.2 + 0.1 == 0.30000000000000004
        (0.3, 0.1 + 0.1, 0.1, True),
        (0, 0, 0, True),
        (0, 0, 0.01, False),
        (5, 5, 0, True),
    ],
)
def test_budget_arithmetic(limit: float, spent: float, cost: float, fits: bool) -> None:
    policies = PolicySet(1, [policy("b", budget={"limit": limit})])
    decided = evaluate(policies, subject(), request(estimated_cost=cost), spent={key("b"): spent})
    assert decided.allowed is fits
    assert decided.code == (None if fits else "BUDGET_EXCEEDED")
    outcome = settle([(Budget("policy:b", limit, policy_id="b"), key("b"))], {key("b"): spent}, cost)
    assert (outcome.exceeded is None) is fits


def test_budget_remaining_is_the_least_room() -> None:
    policies = PolicySet(1, [policy("b", budget={"limit": 5}), policy("c", budget={"limit": 50})])
    spent = {cap_key(): 2, key("b"): 1, key("c"): 0}
    allowed = evaluate(policies, subject(max_budget=10), request(estimated_cost=1), spent=spent)
    assert allowed.allowed
    assert allowed.budget_remaining == pytest.approx(3)  # b: 5 - 1 - 1
    denied = evaluate(policies, subject(max_budget=10), request(estimated_cost=4.5), spent=spent)
    assert denied.code == "BUDGET_EXCEEDED"
    assert denied.policy_id == "b"
    # The least room: the capability's after the cost (10 - 2 - 4.5), b's before it (5 - 1, it did not fit).
    assert denied.budget_remaining == pytest.approx(3.5)
    by_domain = evaluate(
        PolicySet(1, [policy("b", budget={"limit": 5}, domains={"deny": ["evil.com"]})]),
        subject(),
        request(domain="evil.com", estimated_cost=1),
        spent={},
    )
    assert by_domain.code == "RESOURCE_DENIED"
    assert by_domain.budget_remaining == pytest.approx(4)


def test_capability_budget_and_policy_budgets() -> None:
    policies = PolicySet(1, [policy("b", name="Team budget", budget={"limit": 5})])
    by_capability = evaluate(policies, subject(max_budget=2), request(estimated_cost=3), spent={})
    assert by_capability.policy_id is None
    assert "capability budget" in (by_capability.reason or "")
    by_policy = evaluate(policies, subject(max_budget=10), request(estimated_cost=6), spent={})
    assert by_policy.policy_id == "b"
    assert "Team budget" in (by_policy.reason or "")
    pending = evaluate(policies, subject(max_budget=10), request(estimated_cost=1))
    assert [(budget.id, budget.limit, line) for budget, line in pending.budgets] == [
        (CAPABILITY_BUDGET, 10, cap_key()),
        ("policy:b", 5, key("b")),
    ]
    assert pending.budgets[1][0].label == "Team budget"
    assert evaluate(PolicySet(1, []), subject(), request(estimated_cost=99)).budgets == ()


def test_shared_and_per_agent_budget_keys() -> None:
    policies = PolicySet(
        1, [policy("own", budget={"limit": 5}), policy("pool", budget={"limit": 5, "scope": "shared"})]
    )
    lines = {
        agent: [line for _, line in evaluate(policies, subject(agent), request(estimated_cost=1)).budgets]
        for agent in (AGENT, OTHER)
    }
    assert lines[AGENT] == [key("own", AGENT), key("pool", "*")]
    assert lines[OTHER] == [key("own", OTHER), key("pool", "*")]
    spent = {key("pool", "*"): 4.5}
    for agent in (AGENT, OTHER):
        decided = evaluate(policies, subject(agent), request(estimated_cost=1), spent=spent)
        assert (decided.code, decided.policy_id) == ("BUDGET_EXCEEDED", "pool")


@pytest.mark.parametrize(
    ("period", "before", "after", "rolls_over"),
    [
        (
            "daily",
            datetime(2024, 6, 12, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2024, 6, 13, tzinfo=UTC),
            True,
        ),
        ("daily", datetime(2024, 6, 12, tzinfo=UTC), datetime(2024, 6, 12, 23, 59, tzinfo=UTC), False),
        ("daily", datetime(2024, 2, 28, 23, 59, tzinfo=UTC), datetime(2024, 2, 29, 0, 1, tzinfo=UTC), True),
        ("monthly", datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC), True),
        ("monthly", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 29, 23, 59, tzinfo=UTC), False),
        ("monthly", datetime(2024, 12, 31, 23, 59, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC), True),
        ("lifetime", datetime(2024, 1, 1, tzinfo=UTC), datetime(2030, 6, 1, tzinfo=UTC), False),
    ],
)
def test_budget_periods_roll_over_in_utc(
    period: str, before: datetime, after: datetime, rolls_over: bool
) -> None:
    budget = Budget("policy:b", 5, period=period, policy_id="b")
    assert (budget.key(AGENT, before) != budget.key(AGENT, after)) is rolls_over
    assert budget.key(AGENT, before).startswith(f"policy:b:{AGENT}:")
    policies = PolicySet(1, [policy("b", budget={"limit": 5, "period": period})])
    spent = {budget.key(AGENT, before): 5}
    late = evaluate(policies, subject(), request(estimated_cost=1, at=after), spent=spent)
    assert late.allowed is rolls_over


def test_budget_buckets() -> None:
    at = datetime(2024, 3, 9, 18, 45, tzinfo=UTC)
    assert Budget("x", 1, "daily").bucket(at) == "2024-03-09"
    assert Budget("x", 1, "monthly").bucket(at) == "2024-03"
    assert Budget("x", 1, "lifetime").bucket(at) == "all"
    assert Budget("x", 1, "daily", shared=True).key(AGENT, at) == "x:*:2024-03-09"
    assert Budget("x", 1, "monthly").key(AGENT, at) == f"x:{AGENT}:2024-03"
    assert set(PERIODS) == {"lifetime", "daily", "monthly"}


def test_budget_buckets_are_utc_whatever_the_zone_of_the_instant() -> None:
    instant = datetime(2024, 1, 2, 1, 0, tzinfo=UTC)
    same_in_new_york = instant.astimezone(NEW_YORK)  # 2024-01-01 20:00-05:00
    assert Budget("x", 1, "daily").bucket(same_in_new_york) == "2024-01-02"
    assert Budget("x", 1, "monthly").bucket(datetime(2024, 2, 1, 8, 0, tzinfo=TOKYO)) == "2024-01"


def test_needs_budget_and_with_spent() -> None:
    policies = PolicySet(1, [policy("b", budget={"limit": 5}, domains={"deny": ["evil.com"]})])
    pending = evaluate(policies, subject(), request(estimated_cost=2))
    assert pending.allowed
    assert pending.needs_budget
    assert pending.cost == 2
    fits = pending.with_spent({key("b"): 3})
    assert fits.allowed
    assert not fits.needs_budget
    assert fits.budgets == ()
    assert fits.budget_remaining == pytest.approx(0)
    over = pending.with_spent({key("b"): 3.5})
    assert (over.allowed, over.code, over.stage, over.policy_id) == (False, "BUDGET_EXCEEDED", "budget", "b")
    assert over.budget_remaining == pytest.approx(1.5)
    # Denied later in the chain: the budget stage comes first, so it still decides which denial is reported.
    by_domain = evaluate(policies, subject(), request(domain="evil.com", estimated_cost=2))
    assert by_domain.code == "RESOURCE_DENIED"
    assert by_domain.needs_budget
    assert by_domain.with_spent({key("b"): 0}).code == "RESOURCE_DENIED"
    assert by_domain.with_spent({key("b"): 4}).code == "BUDGET_EXCEEDED"
    # Denied before the budget stage: nothing to reserve.
    early = evaluate(policies, subject(), request(tool="email", estimated_cost=2))
    assert early.code == "CAPABILITY_DENIED"
    assert not early.needs_budget
    assert early.budgets == ()
    assert not evaluate(PolicySet(1, []), subject(), request(estimated_cost=2)).needs_budget


def test_settle_counts_dry_run_budgets_without_refusing() -> None:
    watch = Budget("policy:w", 1, policy_id="w", enforce=False)
    hard = Budget("policy:h", 10, policy_id="h")
    outcome = settle([(watch, "w"), (hard, "h")], {"w": 1, "h": 2}, 3)
    assert outcome.exceeded is None
    assert outcome.remaining == pytest.approx(5)
    assert outcome.would_deny == (WouldDeny("w", None, "BUDGET_EXCEEDED", outcome.would_deny[0].reason),)
    outcome = settle([(hard, "h"), (Budget("policy:g", 4, policy_id="g"), "g")], {"h": 9}, 3)
    assert outcome.exceeded is not None
    assert outcome.exceeded.policy_id == "h"
    assert outcome.remaining == pytest.approx(1)  # h: 10 - 9 (did not fit), g: 4 - 0 - 3 = 1
    assert settle([], {}, 5) == type(outcome)(None, (), None)


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "pointers"),
    [
        (policy("ok", rule("r", tools=["web_*"], domains=["*.a.com"]), domains={"allow": ["*"]}), []),
        (policy("p", domains={"allow": ["ok.com", "*.com"]}), ["/domains/allow/1"]),
        (policy("p", domains={"deny": ["a.*.com"]}), ["/domains/deny/0"]),
        (policy("p", rule("r", actions=["read", "[ab]"])), ["/rules/0/actions/1"]),
        (policy("p", rule("r", resources=["db users"])), ["/rules/0/resources/0"]),
        (policy("p", rule("r", tools=["{a,b}"])), ["/rules/0/conditions/tools/0"]),
        (policy("p", rule("r", domains=["https://x.com"])), ["/rules/0/conditions/domains/0"]),
        (policy("p", rule("a"), rule("b"), rule("a")), ["/rules/2/id"]),
        (
            policy("p", rule("r", time={"timezone": "Mars/Olympus_Mons"})),
            ["/rules/0/conditions/time/timezone"],
        ),
        (
            policy("p", rule("r", time={"timezone": "../../etc/passwd"})),
            ["/rules/0/conditions/time/timezone"],
        ),
        (policy("p", rule("r", time={"start": "9:00", "end": "17:00"})), ["/rules/0/conditions/time/start"]),
        (policy("p", rule("r", time={"start": "09:00", "end": "24:00"})), ["/rules/0/conditions/time/end"]),
        (
            policy("p", rule("r", time={"start": "12:60", "end": "noon"})),
            [
                "/rules/0/conditions/time/start",
                "/rules/0/conditions/time/end",
            ],
        ),
        (policy("p", rule("r", time={"days": ["mon", "monday"]})), ["/rules/0/conditions/time/days/1"]),
        (
            policy(
                "p",
                rule("r", actions=[""]),
                rule("s", time={"start": "07:5", "end": "08:00", "timezone": "Nowhere"}),
                domains={"allow": ["*."]},
            ),
            [
                "/domains/allow/0",
                "/rules/0/actions/0",
                "/rules/1/conditions/time/start",
                "/rules/1/conditions/time/timezone",
            ],
        ),
    ],
)
def test_validate_points_at_each_error(document: Doc, pointers: list[str]) -> None:
    errors = validate(document)
    assert [pointer for pointer, _ in errors] == pointers
    assert all(detail for _, detail in errors)
    if pointers:
        with pytest.raises(PolicyError) as caught:
            PolicySet(1, [document])
        assert caught.value.errors == errors
        assert pointers[0] in str(caught.value)
    else:
        compile_policy(document)


def test_rules_without_ids_are_not_duplicates() -> None:
    document = {"id": "p", "rules": [{"effect": "deny", "actions": ["delete"]}, {"effect": "allow"}]}
    assert validate(document) == []
    decided = evaluate(PolicySet(1, [document]), subject(), request("delete"))
    assert decided.matched_rule == "rule-1"


def test_context_conditions_match_json_booleans() -> None:
    policies = PolicySet(1, [policy("p", rule("no-sandbox", context={"sandbox": "true"}))])
    decided = evaluate(policies, subject(), Request.of("read", "x", json.loads('{"sandbox": true}'), at=AT))
    assert decided.matched_rule == "no-sandbox"


def test_a_missing_context_key_matches_no_value() -> None:
    policies = PolicySet(1, [policy("p", rule("odd", context={"env": ["None", "prod"]}))])
    assert evaluate(policies, subject(), request()).allowed


def test_would_deny_does_not_depend_on_when_budgets_are_settled() -> None:
    policies = PolicySet(1, [policy("b", budget={"limit": 1}), policy("watch", rule("w"), mode="dry_run")])
    direct = evaluate(policies, subject(), request(estimated_cost=2), spent={})
    settled = evaluate(policies, subject(), request(estimated_cost=2)).with_spent({})
    assert (direct.code, settled.code) == ("BUDGET_EXCEEDED", "BUDGET_EXCEEDED")
    assert settled.would_deny == direct.would_deny


@pytest.mark.parametrize(
    ("document", "pointer"),
    [
        (policy("p", budget={"limit": 5, "period": "weekly"}), "/budget/period"),
        (policy("p", budget={"limit": -5}), "/budget/limit"),
        (policy("p", rule("r", time={"start": "09:00"})), "/rules/0/conditions/time"),
    ],
)
def test_validate_catches_budget_and_half_open_window_errors(document: Doc, pointer: str) -> None:
    assert any(found.startswith(pointer) for found, _ in validate(document))


def test_rule_ids_default_to_their_position() -> None:
    document = {"id": "p", "rules": [{"effect": "allow", "actions": ["read"]}]}
    assert evaluate(PolicySet(1, [document]), subject(), request()).matched_rule == "rule-1"


# -- traces ------------------------------------------------------------------------------------------


def steps(decision: Decision) -> list[tuple[str, str]]:
    """The (stage, result) pairs of a decision's trace."""
    assert decision.trace is not None
    return [(step["stage"], step["result"]) for step in decision.trace]


def test_trace_of_an_allowed_request() -> None:
    decided = evaluate(PolicySet(1, []), subject(), request(), trace=True)
    assert steps(decided) == [
        ("kill_switch", "pass"),
        ("capability", "pass"),
        ("budget", "skip"),
        ("domain", "skip"),
        ("custom", "pass"),
    ]
    assert decided.trace is not None
    assert decided.trace[-1]["detail"] == "no rule denies"
    assert evaluate(PolicySet(1, []), subject(), request()).trace is None
    assert decided.to_json()["trace"] == list(decided.trace)


def test_trace_names_the_allowing_rule_and_the_budget_room() -> None:
    policies = PolicySet(1, [policy("p", rule("may-read", "allow"), budget={"limit": 5})])
    decided = evaluate(
        policies, subject(), request(domain="company.com", estimated_cost=1), spent={}, trace=True
    )
    assert steps(decided) == [
        ("kill_switch", "pass"),
        ("capability", "pass"),
        ("budget", "pass"),
        ("domain", "pass"),
        ("custom", "pass"),
    ]
    assert decided.trace is not None
    assert decided.trace[2]["detail"] == "remaining 4.0"
    assert decided.trace[4]["detail"] == "allowed by rule 'may-read'"
    pending = evaluate(policies, subject(), request(domain="company.com", estimated_cost=1), trace=True)
    assert steps(pending)[2] == ("budget", "pending")
    assert pending.with_spent({}).trace == decided.trace
    over = pending.with_spent({key("p"): 4.5})
    assert steps(over) == [("kill_switch", "pass"), ("capability", "pass"), ("budget", "deny")]
    assert over.trace is not None
    assert over.trace[-1]["detail"] == over.reason


@pytest.mark.parametrize(
    ("who", "what", "expected"),
    [
        (subject(status="paused"), request(), [("kill_switch", "deny")]),
        (subject(), request(tool="email"), [("kill_switch", "pass"), ("capability", "deny")]),
        (
            subject(),
            request(domain="evil.com"),
            [("kill_switch", "pass"), ("capability", "pass"), ("budget", "skip"), ("domain", "deny")],
        ),
        (
            subject(),
            request("delete"),
            [
                ("kill_switch", "pass"),
                ("capability", "pass"),
                ("budget", "skip"),
                ("domain", "skip"),
                ("custom", "deny"),
            ],
        ),
    ],
)
def test_trace_ends_at_the_denying_stage(
    who: Subject, what: Request, expected: list[tuple[str, str]]
) -> None:
    policies = PolicySet(
        1, [policy("p", rule("no-delete", actions=["delete"]), domains={"deny": ["evil.com"]})]
    )
    decided = evaluate(policies, who, what, trace=True)
    assert steps(decided) == expected
    assert decided.trace is not None
    assert decided.trace[-1]["detail"] == decided.reason


# -- requests, subjects, selection -------------------------------------------------------------------


def test_request_of_reads_the_check_context() -> None:
    made = Request.of(
        "Read",
        "db/users",
        {
            "tool": "Web_Search",
            "domain": "HTTPS://User@API.Company.com:443/x",
            "estimated_cost": "1.5",
            "env": "prod",
        },
        at=AT,
    )
    assert (made.action, made.resource, made.tool, made.domain) == (
        "Read",
        "db/users",
        "Web_Search",
        "api.company.com",
    )
    assert made.estimated_cost == 1.5
    assert made.context["env"] == "prod"
    assert made.at == AT
    bare = Request.of("read", "x")
    assert (bare.tool, bare.domain, bare.estimated_cost, dict(bare.context), bare.at) == (
        None,
        None,
        0.0,
        {},
        None,
    )
    assert Request.of("read", "x", {"domain": "", "tool": None}).domain is None
    assert Request.of("read", "x", {"domain": "company.com."}).domain == "company.com"


def test_subject_of_reads_capabilities_and_labels() -> None:
    made = Subject.of(
        AGENT,
        capabilities={"tools": ["sql"], "domains": ["*.company.com"], "max_budget": "12.5"},
        agent_type="crawler",
        owner="bob",
        deployment_env="dev",
        metadata={"team": "red", "cost_center": 42, "labels": {"tier": "gold", "team": "blue"}},
    )
    assert (made.tools, made.domains, made.max_budget) == (("sql",), ("*.company.com",), 12.5)
    assert dict(made.labels) == {"team": "blue", "tier": "gold"}  # nested labels win, non-strings are dropped
    assert labels_of({"a": "x", "b": 1, "labels": {"c": 2}}) == {"a": "x", "c": "2"}
    assert Subject.of(AGENT).tools == ()
    assert Subject.of(AGENT).max_budget is None
    assert Subject.from_json(made.to_json()) == made
    paused = made.with_status("paused")
    assert paused.status == "paused"
    assert paused.target_key == made.target_key


def test_effective_policies_are_cached_by_targeting_attributes() -> None:
    policies = PolicySet(1, INHERIT)
    first = policies.effective(subject())
    assert policies.effective(subject(status="paused", tools=(), max_budget=3)) is first
    assert policies.effective(subject(metadata={"team": "red"})) is not first
    assert policies.effective(subject(OTHER)) is not first
    assert [p.id for p in first.policies] == ["tenant", "this-agent"]
    assert [document["id"] for document in policies.documents_for(subject(agent_type="crawler"))] == sorted(
        ["crawlers", "tenant", "this-agent"]
    )
    assert evaluate(first, subject(), request("delete")).matched_rule == "agent-no-delete"
    tiny = PolicySet(1, INHERIT, max_cached=1)
    for _ in range(2):
        for who in (subject(), subject(OTHER), subject(agent_type="crawler")):
            assert (
                evaluate(tiny, who, request("delete")).allowed
                == evaluate(policies, who, request("delete")).allowed
            )


def test_documents_are_ordered_by_priority_then_id() -> None:
    policies = PolicySet(1, [policy("b"), policy("a"), policy("c", priority=5), policy("z", priority=-1)])
    assert [document["id"] for document in policies.documents_for(subject())] == ["c", "a", "b", "z"]


# -- bundles -----------------------------------------------------------------------------------------


def test_a_bundle_decides_like_its_policy_set() -> None:
    documents = [
        *INHERIT,
        policy("other", rule("no-read", actions=["read"]), target={"kind": "agent", "agent_id": OTHER}),
        policy("b", budget={"limit": 5}, domains={"allow": ["*.company.com"]}),
    ]
    policies = PolicySet(7, documents)
    who = subject(max_budget=3, metadata={"team": "red"})
    payload = json.loads(
        json.dumps(bundle_payload("tenant-1", policies, who, "2024-06-12T10:30:00Z", "later"))
    )
    assert {document["id"] for document in payload["policies"]} == {"tenant", "red-team", "this-agent", "b"}
    bundle = Bundle.from_payload(payload)
    assert (bundle.tenant_id, bundle.version, bundle.subject) == ("tenant-1", 7, who)
    assert (bundle.issued_at, bundle.expires_at) == ("2024-06-12T10:30:00Z", "later")
    for what in (
        request(),
        request("delete"),
        request("read", "prod/x"),
        request(domain="partner.io"),
        request(domain="a.company.com", estimated_cost=2),
        request(tool="email"),
    ):
        for spent in ({}, {cap_key(): 2.5}):
            expected = evaluate(policies, who, what, spent=spent, trace=True)
            assert bundle.evaluate(what, spent=spent, trace=True) == expected
    assert bundle.evaluate(request(), status="terminated").code == "TERMINATED"
    assert bundle.evaluate(request(), status="paused").code == "PAUSED"


# -- properties --------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=200, deadline=None, database=None)

# A small universe of names, so that generated rules often match generated requests. Pieces are drawn
# whole from pools (one draw each): generating is what costs time here, not evaluating.
AGENTS = (AGENT, OTHER)
ACTIONS = ("read", "write", "delete", "web_search", "Read")
RESOURCES = ("db/users", "db/orders", "files/a.txt", "api")
TOOLS = ("web_search", "sql", "email", "WEB_fetch")
DOMAINS = ("api.company.com", "a.b.company.com", "company.com", "evil.com", "evilcompany.com")
COSTS = (0.0, 0.5, 1.0, 2.5, 5.0, 10.0)
ENVS = ("prod", "dev", "staging")
MOMENTS = (
    AT,
    datetime(2024, 6, 12, 23, 30, tzinfo=UTC),
    datetime(2024, 6, 15, 3, 0, tzinfo=UTC),
    datetime(2024, 6, 13, 8, 0, tzinfo=TOKYO),
    datetime(2024, 1, 31, 23, 59, tzinfo=UTC),
    datetime(2024, 2, 1, 0, 0, tzinfo=UTC),
)
MAX_POLICIES = 4

ACTION_LISTS = (
    ["*"],
    ["*"],
    ["read"],
    ["write", "delete"],
    ["web_*"],
    ["*_search"],
    ["wr?te"],
    ["READ", "delete"],
)
RESOURCE_LISTS = (["*"], ["*"], ["db/*"], ["files/*", "api"], ["DB/USERS"], ["*.txt"])
SELECTORS: tuple[Doc, ...] = (
    {},
    {"agent_type": ["crawler"]},
    {"agent_type": ["assistant", "crawler"], "deployment_env": ["prod"]},
    {"deployment_env": ["dev", "staging"]},
    {"labels": {"team": "red"}},
    {"agent_type": ["assistant"], "labels": {"team": "blue"}},
)
WINDOWS: tuple[Doc, ...] = (
    {"start": "22:00", "end": "06:00", "timezone": "Europe/Paris"},
    {
        "start": "09:00",
        "end": "17:00",
        "timezone": "America/New_York",
        "days": ["mon", "tue", "wed", "thu", "fri"],
    },
    {"days": ["sat", "sun"], "timezone": "Asia/Tokyo"},
    {"start": "00:00", "end": "12:30"},
    {"start": "12:30", "end": "12:31"},
    {"days": ["wed"]},
)
CONDITIONS: tuple[Doc, ...] = (
    {},
    {},
    {},
    {"tools": ["sql"]},
    {"tools": ["web_*", "e?ail"]},
    {"domains": ["*.company.com"]},
    {"domains": ["evil.com", "company.com"]},
    {"cost": {"gt": 1.0}},
    {"cost": {"gte": 2.5, "lt": 10.0}},
    {"cost": {"lte": 0.5}},
    *({"time": window} for window in WINDOWS),
    *({"agent": selector} for selector in SELECTORS[1:]),
    {"context": {"env": "prod"}},
    {"context": {"env": ["dev", "staging"]}},
    {"tools": ["*"], "cost": {"gt": 0.0}},
    {"domains": ["*"], "context": {"env": "prod"}, "time": WINDOWS[3]},
)
TARGETS: tuple[Doc, ...] = (
    {"kind": "tenant"},
    {"kind": "tenant"},
    {"kind": "tenant"},
    {"kind": "agent", "agent_id": AGENT},
    {"kind": "agent", "agent_id": OTHER},
    *({"kind": "selector", "selector": selector} for selector in SELECTORS),
)
DOMAIN_LISTS: tuple[Doc | None, ...] = (
    None,
    None,
    {"allow": ["company.com"]},
    {"deny": ["evil.com"]},
    {"deny": ["*.company.com"]},
    {"allow": ["*.company.com"]},
    {"allow": ["*.company.com", "company.com"], "deny": ["api.company.com"]},
    {"allow": ["*"]},
    {"allow": ["evil.com"]},
)
BUDGETS: tuple[Doc | None, ...] = (
    None,
    None,
    None,
    None,
    None,
    {"limit": 5.0},
    {"limit": 1.0, "period": "daily"},
    {"limit": 10.0, "period": "monthly", "scope": "shared"},
    {"limit": 0.5, "scope": "shared"},
    {"limit": 2.5, "period": "daily", "scope": "shared"},
)
TOOL_CAPS = (["*"], ["*"], ["web_*", "sql"], ["sql"], [])
DOMAIN_CAPS_POOL = (["*"], ["*"], ["*.company.com", "company.com", "evil.com"], ["*.company.com"], [])


def _often(common: Any, pool: Sequence[Any]) -> st.SearchStrategy[Any]:
    """``common`` half of the time, else anything from ``pool``: rules must match often to be interesting."""
    return st.one_of(st.just(common), st.sampled_from(pool))


_rules = st.fixed_dictionaries(
    {
        "effect": st.sampled_from(("allow", "deny")),
        "actions": _often(["*"], ACTION_LISTS),
        "resources": _often(["*"], RESOURCE_LISTS),
        "conditions": _often({}, CONDITIONS),
        "priority": st.integers(-2, 2),
    }
)


@st.composite
def _documents(draw: st.DrawFn, index: int) -> Doc:
    pid = f"p{index}"
    document: Doc = {
        "id": pid,
        "name": pid,
        "target": draw(st.sampled_from(TARGETS)),
        "mode": draw(st.sampled_from(("enforce", "enforce", "dry_run"))),
        "priority": draw(st.integers(-2, 2)),
        "default_effect": draw(st.sampled_from(("allow", "allow", "deny"))),
        "enabled": draw(st.sampled_from((True, True, True, False))),
        "rules": [{**spec, "id": f"{pid}-r{n}"} for n, spec in enumerate(draw(st.lists(_rules, max_size=4)))],
    }
    domains, budget = draw(st.sampled_from(DOMAIN_LISTS)), draw(st.sampled_from(BUDGETS))
    if domains is not None:
        document["domains"] = domains
    if budget is not None:
        document["budget"] = budget
    return copy.deepcopy(document)  # pools are shared: a test may change what it is given


@st.composite
def policy_sets(draw: st.DrawFn) -> list[Doc]:
    """Up to four valid policy documents over the small universe above."""
    count = draw(st.integers(0, MAX_POLICIES))
    return [draw(_documents(index)) for index in range(count)]


@st.composite
def subjects(draw: st.DrawFn) -> Subject:
    """Agents, mostly active, with some capabilities and attributes."""
    team = draw(st.sampled_from((None, "red", "blue")))
    return Subject.of(
        draw(st.sampled_from(AGENTS)),
        status=draw(st.sampled_from(("active",) * 10 + ("paused", "terminated"))),
        capabilities={
            "tools": draw(_often(["*"], TOOL_CAPS)),
            "domains": draw(_often(["*"], DOMAIN_CAPS_POOL)),
            "max_budget": draw(_often(None, COSTS[1:])),
        },
        agent_type=draw(st.sampled_from((None, "assistant", "crawler"))),
        deployment_env=draw(st.sampled_from((None, *ENVS))),
        metadata={"team": team} if team else {},
    )


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """Requests in the check API's shape."""
    context: dict[str, Any] = {}
    for name, values in (("tool", TOOLS), ("domain", DOMAINS), ("estimated_cost", COSTS), ("env", ENVS)):
        value = draw(st.sampled_from((None, *values)))
        if value is not None:
            context[name] = value
    return Request.of(
        draw(st.sampled_from(ACTIONS)),
        draw(st.sampled_from(RESOURCES)),
        context,
        draw(st.sampled_from(MOMENTS)),
    )


def _all_counters() -> list[str]:
    ids = [CAPABILITY_BUDGET] + [f"policy:p{index}" for index in range(MAX_POLICIES)]
    buckets = {Budget("x", 1, period).bucket(at) for at in MOMENTS for period in PERIODS}
    return [f"{budget}:{owner}:{bucket}" for budget in ids for owner in (*AGENTS, "*") for bucket in buckets]


ALL_COUNTERS = _all_counters()
SPENDS = (0.0, 0.5, 1.0, 4.5, 5.0, 9.5, 20.0)


@st.composite
def spents(draw: st.DrawFn) -> dict[str, float]:
    """What every budget counter a generated set can name holds (amounts spread over counters by hashing)."""
    salt = draw(st.integers(0, 1000))
    scale = draw(st.sampled_from((0, 0, 1, 2)))  # 0: nothing spent yet
    return {
        name: SPENDS[zlib.crc32(f"{salt}{name}".encode()) % len(SPENDS)] * scale / 2 for name in ALL_COUNTERS
    }


def essence(decision: Decision) -> tuple[Any, ...]:
    """What must not depend on how a decision was computed."""
    return (
        decision.allowed,
        decision.code,
        decision.stage,
        decision.matched_rule,
        decision.policy_id,
        decision.budget_remaining,
    )


@PROPERTY
@given(
    documents=policy_sets(),
    who=subjects(),
    what=requests(),
    spent=spents(),
    choice=st.integers(0, 100),
    priority=st.integers(-3, 3),
    exact=st.booleans(),
)
def test_a_matching_enforced_deny_overrides_any_allow(
    documents: list[Doc],
    who: Subject,
    what: Request,
    spent: dict[str, float],
    choice: int,
    priority: int,
    exact: bool,
) -> None:
    before = evaluate(PolicySet(1, documents), who, what, spent=spent)
    deny = rule(
        "zz-deny",
        actions=[what.action.upper()] if exact else ["*"],
        resources=[what.resource] if exact else ["*"],
        priority=priority,
    )
    applying = {document["id"] for document in PolicySet(1, documents).documents_for(who)}
    hosts = [d for d in documents if d["id"] in applying and d.get("mode", "enforce") == "enforce"]
    changed = copy.deepcopy(documents)
    if hosts and choice % (len(hosts) + 1):
        host = hosts[choice % (len(hosts) + 1) - 1]["id"]
        next(d for d in changed if d["id"] == host)["rules"].append(deny)
    else:
        changed.append(policy("zz", deny, priority=priority))
    after = evaluate(PolicySet(1, changed), who, what, spent=spent)
    assert not after.allowed
    if before.allowed:
        assert (after.code, after.stage, after.matched_rule) == ("CUSTOM_DENIED", "custom", "zz-deny")
    else:
        assert (after.code, after.stage) == (before.code, before.stage)


@PROPERTY
@given(documents=policy_sets(), who=subjects(), what=requests(), spent=spents())
def test_dry_run_policies_never_change_the_decision(
    documents: list[Doc], who: Subject, what: Request, spent: dict[str, float]
) -> None:
    enforced_only = [document for document in documents if document["mode"] != "dry_run"]
    with_watchers = evaluate(PolicySet(1, documents), who, what, spent=spent)
    without = evaluate(PolicySet(1, enforced_only), who, what, spent=spent)
    assert essence(with_watchers) == essence(without)
    assert set(without.would_deny) <= set(with_watchers.would_deny)
    watchers = {document["id"] for document in documents if document["mode"] == "dry_run"}
    assert {item.policy_id for item in with_watchers.would_deny} <= watchers


@PROPERTY
@given(
    documents=policy_sets(),
    who=subjects(),
    what=requests(),
    spent=spents(),
    extra=st.sampled_from((0.01, 0.5, 3.0, 100.0)),
)
def test_budgets_are_monotonic_in_the_cost(
    documents: list[Doc], who: Subject, what: Request, spent: dict[str, float], extra: float
) -> None:
    policies = PolicySet(1, documents)
    decided = evaluate(policies, who, what, spent=spent)
    dearer = evaluate(
        policies, who, dataclasses.replace(what, estimated_cost=what.estimated_cost + extra), spent=spent
    )
    if decided.code == "BUDGET_EXCEEDED":
        assert dearer.code == "BUDGET_EXCEEDED"


@PROPERTY
@given(documents=policy_sets(), who=subjects(), what=requests(), spent=spents())
def test_evaluating_with_spent_equals_settling_afterwards(
    documents: list[Doc], who: Subject, what: Request, spent: dict[str, float]
) -> None:
    policies = PolicySet(1, documents)
    direct = evaluate(policies, who, what, spent=spent, trace=True)
    pending = evaluate(policies, who, what, trace=True)
    settled = pending.with_spent(spent) if pending.needs_budget else pending
    assert essence(settled) == essence(direct)
    assert settled.trace == direct.trace
    assert settled.budgets == ()
    assert direct.budgets == ()
    if direct.code != "BUDGET_EXCEEDED":
        assert sorted(settled.would_deny, key=repr) == sorted(direct.would_deny, key=repr)


@PROPERTY
@given(documents=policy_sets(), who=subjects(), what=requests(), spent=spents(), seed=st.integers(0, 2**16))
def test_rule_order_in_the_document_does_not_matter(
    documents: list[Doc], who: Subject, what: Request, spent: dict[str, float], seed: int
) -> None:
    shuffler = random.Random(seed)
    shuffled = copy.deepcopy(documents)
    shuffler.shuffle(shuffled)
    for document in shuffled:
        shuffler.shuffle(document["rules"])
    first = evaluate(PolicySet(1, documents), who, what, spent=spent)
    second = evaluate(PolicySet(1, shuffled), who, what, spent=spent)
    assert (first.allowed, first.code, first.stage) == (second.allowed, second.code, second.stage)


@PROPERTY
@given(
    documents=policy_sets(),
    who=subjects(),
    what=requests(),
    spent=spents(),
    status=st.sampled_from((None, "paused")),
)
def test_a_bundle_decides_exactly_like_its_policy_set(
    documents: list[Doc], who: Subject, what: Request, spent: dict[str, float], status: str | None
) -> None:
    policies = PolicySet(3, documents)
    payload = bundle_payload("t", policies, who, "2024-06-12T10:30:00Z", "2024-06-12T10:35:00Z")
    bundle = Bundle.from_payload(json.loads(json.dumps(payload)))
    assert bundle.subject == who
    local = bundle.evaluate(what, status=status, spent=spent, trace=True)
    central = evaluate(
        policies, who if status is None else who.with_status(status), what, spent=spent, trace=True
    )
    assert local == central
    assert bundle.evaluate(what) == evaluate(policies, who, what)


def _every_rule_walked(policies: PolicySet, who: Subject, what: Request) -> tuple[str | None, list[str]]:
    """The custom stage done the long way: every candidate rule tried in order with its own matcher.

    Returns the enforced deny rule that decides (or else the first enforced allow rule, or None) and the
    dry-run deny rules that match before it.
    """
    found = policies.effective(who).candidates(what.action.lower(), what.tool.lower() if what.tool else None)
    allow: str | None = None
    shadows: list[str] = []
    for rule, *_ in found:
        if rule.resource is not None and not rule.resource(what.resource.lower()):
            continue
        if rule.conditions is not None and not rule.conditions(who, what, what.at):
            continue
        if rule.effect == "deny" and rule.enforce:
            return rule.id, shadows
        if rule.effect == "deny":
            shadows.append(rule.id)
        elif rule.enforce and allow is None:
            allow = rule.id
    return allow, shadows


@PROPERTY
@given(documents=policy_sets(), who=subjects(), what=requests())
def test_the_custom_stage_decides_as_trying_every_rule_would(
    documents: list[Doc], who: Subject, what: Request
) -> None:
    """After an enforced allow only deny rules are tried, resources by prefix: the verdict is the same."""
    policies = PolicySet(1, documents)
    decided = evaluate(policies, who, what, spent={})
    if decided.stage not in (None, "custom"):
        return  # decided before the custom stage
    rule, shadows = _every_rule_walked(policies, who, what)
    assert decided.matched_rule == rule
    assert [item.rule for item in decided.would_deny if item.rule is not None] == shadows


def _candidates_the_long_way(
    policies: PolicySet, who: Subject, action: str, tool: str | None, *, any_tool: bool = False
) -> list[str]:
    """Every rule of the agent's policies in order (policy precedence, then rule order), tested one by one."""
    ordered = policies.effective(who).policies
    assert [p.id for p in ordered] == sorted(
        (p.id for p in policies.policies if p.applies_to(who)),
        key=lambda pid: (-next(p.priority for p in ordered if p.id == pid), pid),
    )
    walked = sorted((item for p in ordered for item in p.rules), key=lambda item: item[2][0].order)
    return [
        entry[0].id
        for actions, _, entry in walked
        if globs.names(actions)(action)
        and (any_tool or entry[0].tool is None or (tool is not None and entry[0].tool(tool)))
    ]


@PROPERTY
@given(documents=policy_sets(), who=subjects(), what=requests())
def test_the_rule_index_finds_what_testing_every_rule_would(
    documents: list[Doc], who: Subject, what: Request
) -> None:
    """The index (exact actions by name, pattern actions tested once per action) misses and adds nothing."""
    policies = PolicySet(1, documents)
    action, tool = what.action.lower(), what.tool.lower() if what.tool else None
    expected = _candidates_the_long_way(policies, who, action, tool)
    assert [entry[0].id for entry in policies.effective(who).candidates(action, tool)] == expected
    # Asked again, from the cache, and through a fresh set: the same answer.
    assert [entry[0].id for entry in policies.effective(who).candidates(action, tool)] == expected
    fresh = PolicySet(1, documents).effective(who)
    assert [entry[0].id for entry in fresh.rules_for(action)] == _candidates_the_long_way(
        policies, who, action, tool, any_tool=True
    )


def test_agents_with_the_same_policies_share_one_selection() -> None:
    policies = PolicySet(1, INHERIT)
    first = policies.effective(subject())
    assert policies.effective(subject(metadata={"team": "blue"})) is first  # no policy selects blue
    assert policies.effective(subject(OTHER)) is not first


@pytest.mark.timeout(30)
def test_a_large_policy_set_with_distinct_actions_compiles_and_decides() -> None:
    """Regression: each exact action scanned every rule (quadratic): 4,000 rules stalled for minutes."""
    documents = [
        policy(
            f"p{p}",
            *(
                rule(
                    f"r{n}",
                    "deny" if n % 5 == 0 else "allow",
                    actions=[f"act_{n}", *([f"grp_{n % 7}_*"] if n % 10 == 0 else [])],
                    resources=[f"res/{n}/*"],
                )
                for n in range(p * 400, (p + 1) * 400)
            ),
            priority=p % 3,
        )
        for p in range(10)
    ]
    policies = PolicySet(1, documents)
    who = subject()
    assert evaluate(policies, who, request("act_7", "res/7/x")).matched_rule == "r7"
    assert evaluate(policies, who, request("act_3995", "res/3995/x")).code == Code.CUSTOM_DENIED.value
    assert evaluate(policies, who, request("act_3995", "res/1/x")).allowed
    # A pattern action matches actions no exact rule names, and merges in order with those one does.
    assert evaluate(policies, who, request("grp_0_x", "res/0/y")).matched_rule == "r0"
    assert evaluate(policies, who, request("grp_1_x", "res/0/y")).allowed
    assert [entry[0].id for entry in policies.effective(who).rules_for("act_70")] == ["r70"]


def _mixed_large_set() -> list[Doc]:
    """30 policies of 150 rules (4,500, past one step of every pass): mixed rule and policy priorities,
    actions shared across policies, some pattern actions, and one policy in five for one agent only."""
    return [
        policy(
            f"p{p:02}",
            *(
                rule(
                    f"r{n}",
                    "deny" if n % 4 == 0 else "allow",
                    actions=[f"act_{n % 700}", *([f"grp_{n % 5}_*", f"g?p_{n % 3}_x"] if n % 9 == 0 else [])],
                    priority=(n % 5) - 2 if p % 2 else 0,
                )
                for n in range(p * 150, (p + 1) * 150)
            ),
            priority=p % 3,
            **({"target": {"kind": "agent", "agent_id": AGENT}} if p % 5 == 0 else {}),
        )
        for p in range(30)
    ]


@pytest.mark.parametrize("who", [AGENT, OTHER], ids=["every-policy", "some-policies"])
def test_a_set_built_and_selected_in_steps_orders_rules_as_one_sort_would(who: str) -> None:
    """Placing (radix passes), selecting (all policies, or a subset filtered from the whole order) and an
    action's rules (pattern rules in chunks), each in steps: the same rules, in the same order."""
    documents = _mixed_large_set()
    steps = PolicySet.in_steps(7, documents)
    paused = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            built: PolicySet = done.value
            break
        paused += 1
    assert paused >= 4_500 // RULES_PER_STEP
    assert built.version == 7
    assert built.rule_count == 4_500
    agent = subject(who)
    effective = core.finish(built.selecting(agent))
    assert built.cached(agent) is effective is built.effective(agent)
    assert not effective.knows("act_0")  # 1,500 action patterns: worked out in two steps
    for action in ("act_0", "act_9", "act_699", "grp_0_x", "gap_0_x", "grp_4_act", "nothing"):
        found = core.finish(effective.finding(action))
        assert [entry[0].id for entry in found] == _candidates_the_long_way(
            built, agent, action, None, any_tool=True
        )
        assert effective.knows(action)
    reference = PolicySet(7, documents)
    for action in ("act_0", "act_18", "grp_1_y", "zzz"):
        asked = request(action, "db/users")
        assert evaluate(built, agent, asked) == evaluate(reference, agent, asked)


def test_generated_sets_exercise_every_outcome() -> None:
    """A guard on the strategies: the properties above are only as good as the variety they see."""
    seen: set[tuple[bool, str | None]] = set()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(documents=policy_sets(), who=subjects(), what=requests(), spent=spents())
    def collect(documents: list[Doc], who: Subject, what: Request, spent: dict[str, float]) -> None:
        decided = evaluate(PolicySet(1, documents), who, what, spent=spent)
        seen.add((decided.allowed, decided.code))

    collect()
    assert (True, None) in seen
    assert {code for _, code in seen} >= {code.value for code in Code} - {"RATE_LIMITED"}
