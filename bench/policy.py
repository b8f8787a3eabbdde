"""Policy decisions: AIGOS's evaluator in process against cedarpy and pycasbin; the check API over HTTP.

Part 1, in process. A deterministic workload (seeded ``random``): ``--agents`` agents (default 1,000), each
with capabilities (tool and domain patterns), an agent type and a deployment environment, and a tenant's
``--policies`` (default 1,000) giving every agent with a policy of its own exactly ``--rules`` applicable
rules (default 50): 40% tenant-wide (two policies, the first denies by default and carries the tenant's
domain deny list), 20% selected by agent type, 20% by environment, 20% in a policy of the agent's own.
``--requests`` requests (default 10,000) mix allowed ones, capability denials (tool or domain outside the
agent's capabilities), domain denials and custom denials (a deny rule matches, or no allow rule does). Each
engine is given the same rules and the same requests, translated into its own language, and timed per
decision with ``time.perf_counter_ns`` (p50 / p99 / p99.9 / max, and decisions/s = 1 / mean on one core;
AIGOS ``--repeat`` times):

- AIGOS: ``aigos.core.policy.evaluate(policy_set, subject, request)``, ``PolicySet.effective`` warmed
  first (the server keeps it cached the same way).
- cedarpy (Cedar's Rust evaluator): ``permit`` / ``forbid`` with ``when`` conditions on ``context``; one
  pre-parsed ``PolicySet`` per agent holding that agent's rules (the per-agent selection AIGOS caches is
  given to Cedar for free: Cedar has no policy index, a tenant-wide set would evaluate every agent's
  rules), an empty pre-parsed ``Entities``. Also ``is_authorized_batch`` per agent, for throughput.
- pycasbin: one enforcer per agent (same reason) with a deny-override model
  (``some(where (p.eft == allow)) && !some(where (p.eft == deny))``), ``keyMatch`` for names and
  ``globMatch`` for domains, and two more sections (``p2`` / ``p3``) for the tool and domain
  capabilities; a rule with several patterns becomes one policy line per combination. Pure Python and
  slow, so only the first ``--casbin-requests`` requests (default 1,000) are timed.

All engines must reach the same allowed/denied verdict on every request; the agreement is printed. What
the workload leaves out because an engine cannot say it the same way: time windows (the result would
depend on the clock), dry-run policies and budgets (Cedar and casbin have no such notion), ``?`` and
infix wildcards in names (Cedar's ``like`` has no single-character wildcard, ``keyMatch`` only a
trailing one), agent-status denials (every agent is active).

Part 2, over HTTP (PostgreSQL + Redis, ``aigos serve --workers 2``): sign up a tenant, register the
agents with their capabilities (``--http-agents``, default all), create the same policies through
``POST /v1/policies`` (``--policies``, default 1,000: the 9 shared ones and one of its own for each of the
first 991 agents), check a sample of verdicts against part 1 over ``httpx``, then load
``POST /v1/policies/check`` with one keep-alive connection per concurrent client (raw asyncio, see
``_load.py``), each connection replaying its own share of a pool of different agents' requests, at
concurrency 1 and 32. Right before each timed phase the floor is timed the same way: ``bench/floor.py``, a
bare Starlette app served by ``aigos serve``'s own launcher with two workers, sent the very same request
bytes. Every figure (p50 / p99 / p99.9 / max, checks/s, the server's CPU µs per check over supervisor and
workers) is printed beside the floor's as a ratio; ``--repeat N`` runs the timed phases N times and
prints each run and the worst. Memory: the RSS of each server process at start, after the agents, after
the policies, after a first pass of checks (each worker has compiled what it serves) and after a soak
of ``--soak`` seconds at c=32 (RSS read every ``--soak-interval`` seconds, the series and its slope after
the first third printed); bytes per agent and per compiled rule. ``--metrics-off`` and ``--otel`` time
the same phases, each right after the check as it ships, on a server with metrics off and on one
exporting traces over OTLP/HTTP to a local receiver (``--otel-sample``, default 10 %).

Targets (this 2-core machine, same run): in-process p99 <= 10 µs in every run; at c=1 p99 <= 3x the
floor's p99 and <= 1 ms, max <= 10 ms; at c=32 >= 60 % of the floor's checks/s and >= 5,000 checks/s
with 2 workers; RSS <= 150 MB per worker with 1,000 agents and 1,000 policies, flat over the soak.

Run: ``.venv/bin/python bench/policy.py [--agents N] [--policies M] [--rules N] [--requests N]
[--repeat N] [--soak SECONDS] [--skip-http] [--skip-peers] [--profile] [--json]``. Part 2 needs
PostgreSQL on 127.0.0.1:5432 (user ``postgres``) and Redis on 127.0.0.1:6379; a fresh database is
created and dropped, and the Redis keys deleted.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``http``.

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0], where ``bench/http.py`` and ``bench/token.py``
# would shadow the standard library's ``http`` and ``token``. Import the bench package from the repo root.
_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import contextlib
import cProfile
import dataclasses
import gc
import io
import itertools
import json
import logging
import os
import pstats
import random
import secrets
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import httpx

from aigos.core import policy as core
from bench._figures import (
    Figures,
    Row,
    Target,
    format_row,
    format_rows,
    format_targets,
    json_default,
    timed_pair,
    worst,
)
from bench._load import HttpLoadClient, LoadRunner, build_request, load_runner, percentile
from bench._memory import MB, Series, Snapshot, format_snapshots, names, slope_mb_per_minute, worker_pids
from bench._server import (
    HOST,
    ServerProcess,
    aigos_server,
    cpu_seconds,
    floor_server,
    postgres_environment,
)
from bench.token import machine_info

DEFAULT_AGENTS = 1_000
DEFAULT_POLICIES = 1_000
DEFAULT_RULES = 50
DEFAULT_REQUESTS = 10_000
DEFAULT_CASBIN_REQUESTS = 1_000
DEFAULT_HTTP_REQUESTS = {1: 10_000}  # any other concurrency: DEFAULT_HTTP_REQUESTS_LOADED
DEFAULT_HTTP_REQUESTS_LOADED = 10_000
HTTP_POOL = 2_000  # distinct check requests replayed over HTTP
HTTP_VERIFY = 500  # of which this many are checked against the in-process verdicts first
HTTP_CONCURRENCY = (1, 32)
HTTP_WORKERS = 2
SOAK_CONCURRENCY = 32
DEFAULT_SOAK_SECONDS = 30.0
DEFAULT_SOAK_INTERVAL = 10.0
SEED = 20240601
#: The label of the check timed on a server with metrics off.
METRICS_OFF = "check, metrics off"
#: The label of the check timed on a server exporting traces (``--otel``), sampled as ``--otel-sample``.
OTEL_ON = "check, traces on"
TARGETS = {
    "inprocess_p99_us": 10.0,
    "http_p99_ms": 1.0,
    "p99_over_floor": 3.0,
    "http_max_ms": 10.0,
    "checks_per_second": 5_000.0,
    "per_second_over_floor": 0.6,
    # What recording metrics may cost the check (#16), measured against a server with them off.
    "metrics_per_second_ratio": 0.97,
    "metrics_p99_added_us": 30.0,
    "worker_rss_mb": 150.0,
    # "Flat": a worker that grew this fast for a day would hold 0.7 GB more.
    "rss_slope_mb_per_minute": 0.5,
}

ACTIONS = ("read", "write", "delete", "execute", "send", "search", "list", "update", "create", "approve")
AREAS = (
    "db/customers",
    "db/orders",
    "db/billing",
    "files/reports",
    "files/tmp",
    "crm/accounts",
    "mail/outbox",
    "tickets",
    "kb/articles",
    "payments/refunds",
    "repo/main",
    "logs/app",
)
TOOLS = (
    "web_search",
    "web_fetch",
    "db_read",
    "db_write",
    "db_admin",
    "email_send",
    "email_read",
    "fs_read",
    "fs_write",
    "shell_exec",
    "calc",
    "slack_post",
    "jira_create",
    "stripe_refund",
    "github_pr",
    "pdf_render",
)
TOOL_FAMILIES = ("web_*", "db_*", "email_*", "fs_*")
#: Domain patterns an agent may be given, and hosts that match each (requests name hosts).
DOMAIN_HOSTS = {
    "*.company.com": ("api.company.com", "docs.company.com", "crm.company.com"),
    "api.github.com": ("api.github.com",),
    "*.githubusercontent.com": ("raw.githubusercontent.com",),
    "api.openai.com": ("api.openai.com",),
    "hooks.slack.com": ("hooks.slack.com",),
    "pastebin.com": ("pastebin.com",),
    "*.ngrok.io": ("abc.ngrok.io", "x1.ngrok.io"),
    "transfer.sh": ("transfer.sh",),
}
OTHER_HOSTS = ("example.org", "files.evil-site.com", "company.com")
DENY_DOMAINS = ("pastebin.com", "*.ngrok.io", "transfer.sh", "*.evil-site.com")
DATA_CLASSES = ("public", "internal", "confidential", "secret")
AGENT_TYPES = ("researcher", "coder", "support", "analyst")
ENVS = ("development", "staging", "production")
#: Policies every workload has: two tenant-wide, one per agent type, one per environment.
SHARED_POLICIES = 2 + len(AGENT_TYPES) + len(ENVS)


# -- the workload ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSpec:
    """One rule in engine-neutral form: every list means "any of"; ``None`` means no condition."""

    id: str
    effect: str  # "allow" | "deny"
    actions: tuple[str, ...]  # ("*",) or exact action names
    resources: tuple[str, ...]  # exact or trailing-* name globs
    tools: tuple[str, ...] | None = None
    domains: tuple[str, ...] | None = None
    cost_lt: int | None = None  # whole currency units
    cost_gte: int | None = None
    data_classes: tuple[str, ...] | None = None

    def document(self) -> dict[str, Any]:
        """The rule as AIGOS's policy document writes it."""
        conditions: dict[str, Any] = {}
        if self.tools:
            conditions["tools"] = list(self.tools)
        if self.domains:
            conditions["domains"] = list(self.domains)
        if self.cost_lt is not None:
            conditions["cost"] = {"lt": self.cost_lt}
        if self.cost_gte is not None:
            conditions["cost"] = {"gte": self.cost_gte}
        if self.data_classes:
            conditions["context"] = {"data_class": list(self.data_classes)}
        rule: dict[str, Any] = {
            "id": self.id,
            "effect": self.effect,
            "actions": list(self.actions),
            "resources": list(self.resources),
        }
        if conditions:
            rule["conditions"] = conditions
        return rule


@dataclass(frozen=True)
class PolicySpec:
    """A policy: whom it targets and its rules (the first tenant policy also denies by default)."""

    name: str
    target: str  # "tenant" | "type:<t>" | "env:<e>" | "agent:<index>"
    rules: tuple[RuleSpec, ...]
    default_deny: bool = False
    deny_domains: tuple[str, ...] = ()

    def document(self, agent_ids: list[str]) -> dict[str, Any]:
        """The policy as ``POST /v1/policies`` takes it (``agent_ids[i]`` is agent ``i``'s id)."""
        kind, _, value = self.target.partition(":")
        target: dict[str, Any] = {"kind": "tenant"}
        if kind == "type":
            target = {"kind": "selector", "selector": {"agent_type": [value]}}
        elif kind == "env":
            target = {"kind": "selector", "selector": {"deployment_env": [value]}}
        elif kind == "agent":
            target = {"kind": "agent", "agent_id": agent_ids[int(value)]}
        document: dict[str, Any] = {
            "name": self.name,
            "target": target,
            "default_effect": "deny" if self.default_deny else "allow",
            "rules": [rule.document() for rule in self.rules],
        }
        if self.deny_domains:
            document["domains"] = {"deny": list(self.deny_domains)}
        return document


@dataclass(frozen=True)
class AgentSpec:
    """An agent: its targeting attributes and capabilities."""

    index: int
    agent_type: str
    env: str
    tools: tuple[str, ...]
    domains: tuple[str, ...]

    def capabilities(self) -> dict[str, Any]:
        """As registered and carried in the agent's token."""
        return {"tools": list(self.tools), "domains": list(self.domains)}


@dataclass(frozen=True)
class Probe:
    """One request of one agent, in engine-neutral form."""

    agent: int
    action: str
    resource: str
    tool: str | None
    domain: str | None
    cents: int
    data_class: str | None

    def context(self) -> dict[str, Any]:
        """The check API's ``context``."""
        context: dict[str, Any] = {"estimated_cost": self.cents / 100}
        if self.tool is not None:
            context["tool"] = self.tool
        if self.domain is not None:
            context["domain"] = self.domain
        if self.data_class is not None:
            context["data_class"] = self.data_class
        return context


@dataclass(frozen=True)
class Workload:
    """Agents, policies and requests."""

    agents: tuple[AgentSpec, ...]
    policies: tuple[PolicySpec, ...]
    probes: tuple[Probe, ...]

    def policies_of(self, agent: AgentSpec) -> list[PolicySpec]:
        """The policies that apply to ``agent``."""
        mine = {"tenant", f"type:{agent.agent_type}", f"env:{agent.env}", f"agent:{agent.index}"}
        return [policy for policy in self.policies if policy.target in mine]

    def rules_of(self, agent: AgentSpec) -> list[RuleSpec]:
        """Every rule that applies to ``agent``."""
        return [rule for policy in self.policies_of(agent) for rule in policy.rules]


def _random_rule(rng: random.Random, rule_id: str, effect: str) -> RuleSpec:
    """A rule; deny rules are narrower (a resource area plus usually one condition), as in practice."""
    if effect == "allow":
        actions = tuple(rng.sample(ACTIONS, rng.choice((1, 2, 2, 3))))
        resources = tuple(f"{area}/*" for area in rng.sample(AREAS, rng.choice((1, 2))))
        return RuleSpec(
            rule_id,
            effect,
            actions,
            resources,
            tools=(rng.choice(TOOL_FAMILIES + TOOLS),) if rng.random() < 0.3 else None,
            domains=(rng.choice(list(DOMAIN_HOSTS)),) if rng.random() < 0.15 else None,
            cost_lt=rng.randint(2, 20) if rng.random() < 0.2 else None,
            data_classes=tuple(rng.sample(DATA_CLASSES[:3], rng.choice((1, 2))))
            if rng.random() < 0.15
            else None,
        )
    actions = ("*",) if rng.random() < 0.3 else tuple(rng.sample(ACTIONS, rng.choice((1, 2))))
    area = rng.choice(AREAS)
    resource = f"{area}/*" if rng.random() < 0.7 else f"{area}/{rng.randint(1, 20)}"
    roll = rng.random()
    return RuleSpec(
        rule_id,
        effect,
        actions,
        (resource,),
        tools=(rng.choice(TOOLS),) if 0.3 <= roll < 0.5 else None,
        cost_gte=rng.randint(5, 15) if roll < 0.3 else None,
        data_classes=tuple(rng.sample(DATA_CLASSES[2:], rng.choice((1, 2)))) if 0.5 <= roll < 0.8 else None,
    )


def _rules(rng: random.Random, prefix: str, count: int) -> tuple[RuleSpec, ...]:
    return tuple(
        _random_rule(rng, f"{prefix}-{n + 1}", "deny" if rng.random() < 0.3 else "allow")
        for n in range(count)
    )


def _name_matches(pattern: str, value: str) -> bool:
    return value.startswith(pattern[:-1]) if pattern.endswith("*") else value == pattern


def _domain_matches(pattern: str, host: str) -> bool:
    return host.endswith(pattern[1:]) if pattern.startswith("*.") else host == pattern


def _pick_tool(rng: random.Random, agent: AgentSpec, pattern: str | None, strict: bool = False) -> str | None:
    """A tool matching ``pattern`` (any when None), usually also one of the agent's capabilities.

    ``strict``: only within the capabilities, ``None`` when there is none.
    """
    candidates = [tool for tool in TOOLS if pattern is None or _name_matches(pattern, tool)]
    within = [tool for tool in candidates if any(_name_matches(cap, tool) for cap in agent.tools)]
    if strict:
        return within[0] if within else None
    return rng.choice(within if within and rng.random() < 0.9 else candidates)


def _pick_host(rng: random.Random, agent: AgentSpec, pattern: str | None, strict: bool = False) -> str | None:
    """A host matching ``pattern`` (any known host when None), usually within the agent's capabilities.

    ``strict``: only within the capabilities, ``None`` when there is none.
    """
    hosts = [host for hosts in DOMAIN_HOSTS.values() for host in hosts]
    candidates = [host for host in hosts if pattern is None or _domain_matches(pattern, host)]
    within = [host for host in candidates if any(_domain_matches(cap, host) for cap in agent.domains)]
    if strict:
        return within[0] if within else None
    if pattern is None and rng.random() < 0.1:
        return rng.choice(OTHER_HOSTS)
    return rng.choice(within if within and rng.random() < 0.9 else candidates)


def _probe(rng: random.Random, agent: AgentSpec, rules: list[RuleSpec]) -> Probe:
    """A request of ``agent``: mostly shaped after one of its allow rules, sometimes anything at all."""
    allows = [rule for rule in rules if rule.effect == "allow"]
    # Allow rules whose tool and domain conditions the agent's capabilities can meet, for most requests.
    reachable = [
        rule
        for rule in allows
        if (not rule.tools or _pick_tool(rng, agent, rule.tools[0], strict=True))
        and (not rule.domains or _pick_host(rng, agent, rule.domains[0], strict=True))
    ]
    if rng.random() < 0.9 and allows:
        rule = rng.choice(reachable if reachable and rng.random() < 0.85 else allows)
        action = rng.choice(ACTIONS) if rule.actions == ("*",) else rng.choice(rule.actions)
        pattern = rng.choice(rule.resources)
        resource = pattern[:-1] + str(rng.randint(1, 40)) if pattern.endswith("*") else pattern
        if rule.tools:
            tool = _pick_tool(rng, agent, rule.tools[0])
        else:
            tool = _pick_tool(rng, agent, None) if rng.random() < 0.75 else None
        if rule.domains:
            domain: str | None = _pick_host(rng, agent, rule.domains[0])
        else:
            domain = _pick_host(rng, agent, None) if rng.random() < 0.4 else None
        cents = rng.randint(0, rule.cost_lt * 100) if rule.cost_lt else rng.randint(0, 1_500)
        data_class = (
            rng.choice(rule.data_classes) if rule.data_classes else rng.choice((*DATA_CLASSES, None, None))
        )
        return Probe(agent.index, action, resource, tool, domain, cents, data_class)
    return Probe(
        agent.index,
        rng.choice(ACTIONS),
        f"{rng.choice(AREAS)}/{rng.randint(1, 40)}",
        rng.choice((*TOOLS, None)),
        rng.choice((*(host for hosts in DOMAIN_HOSTS.values() for host in hosts), *OTHER_HOSTS, None)),
        rng.randint(0, 2_000),
        rng.choice((*DATA_CLASSES, None)),
    )


def build_workload(
    agents: int, rules: int, requests: int, seed: int = SEED, policy_count: int | None = None
) -> Workload:
    """The deterministic workload: every agent with a policy of its own sees exactly ``rules`` rules.

    ``policy_count``: how many policies in all: ``SHARED_POLICIES`` shared ones (tenant, agent types,
    environments), then one own policy for each of the first ``policy_count - SHARED_POLICIES`` agents (the
    others see only the shared rules). Default: one own policy per agent.
    """
    rng = random.Random(seed)
    tenant = rules * 2 // 5
    by_type = rules // 5
    by_env = rules // 5
    own = rules - tenant - by_type - by_env
    specs = []
    for index in range(agents):
        tools = (*rng.sample(TOOL_FAMILIES, 2), *rng.sample(TOOLS, rng.randint(2, 3)))
        domains = ("*.company.com", *rng.sample(list(DOMAIN_HOSTS)[1:], rng.randint(2, 3)))
        specs.append(AgentSpec(index, rng.choice(AGENT_TYPES), rng.choice(ENVS), tools, domains))
    half = tenant // 2
    policies = [
        PolicySpec("tenant baseline", "tenant", _rules(rng, "base", half), True, DENY_DOMAINS),
        PolicySpec("tenant guardrails", "tenant", _rules(rng, "guard", tenant - half)),
    ]
    policies += [PolicySpec(f"type {t}", f"type:{t}", _rules(rng, f"type-{t}", by_type)) for t in AGENT_TYPES]
    policies += [PolicySpec(f"env {e}", f"env:{e}", _rules(rng, f"env-{e}", by_env)) for e in ENVS]
    owners = specs if policy_count is None else specs[: max(0, policy_count - len(policies))]
    policies += [PolicySpec(f"agent {a.index}", f"agent:{a.index}", _rules(rng, "own", own)) for a in owners]
    workload = Workload(tuple(specs), tuple(policies), ())
    rules_of = {agent.index: workload.rules_of(agent) for agent in specs}
    probes = []
    for _ in range(requests):
        agent = rng.choice(specs)
        probes.append(_probe(rng, agent, rules_of[agent.index]))
    return Workload(tuple(specs), tuple(policies), tuple(probes))


# -- the engines -------------------------------------------------------------------------------------


@dataclass
class EngineResult:
    """One engine's timings (ns, ascending) and verdicts, on the first ``len(verdicts)`` requests."""

    name: str
    version: str
    latencies_ns: list[int]
    verdicts: list[bool]
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """p50 / p99 / p99.9 / max in µs and decisions per second (1 / mean latency, one core)."""
        mean = sum(self.latencies_ns) / len(self.latencies_ns)
        return {
            "engine": self.name,
            "version": self.version,
            "requests": len(self.latencies_ns),
            "p50_us": round(percentile(self.latencies_ns, 0.5) / 1000, 2),
            "p99_us": round(percentile(self.latencies_ns, 0.99) / 1000, 2),
            "p999_us": round(percentile(self.latencies_ns, 0.999) / 1000, 2),
            "max_us": round(self.latencies_ns[-1] / 1000, 1),
            "decisions_per_second": round(1e9 / mean),
            "note": self.note,
        }


def _time_each(calls: Iterable[Callable[[], bool]]) -> tuple[list[int], list[bool]]:
    # As the server does once started: what exists now (the workload, compiled policies) is kept out of
    # later garbage collections, whose full passes would otherwise land in some engine's timing.
    gc.collect()
    gc.freeze()
    clock = time.perf_counter_ns
    latencies: list[int] = []
    verdicts: list[bool] = []
    for call in calls:
        start = clock()
        verdict = call()
        latencies.append(clock() - start)
        verdicts.append(verdict)
    return sorted(latencies), verdicts


def _agent_id(index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"aigos-bench-agent-{index}"))


def aigos_inputs(
    workload: Workload,
) -> tuple[core.PolicySet, list[core.Subject], list[core.Request]]:
    """The compiled policy set, one subject per agent and one request per probe."""
    ids = [_agent_id(agent.index) for agent in workload.agents]
    documents = [{**policy.document(ids), "id": f"policy-{n}"} for n, policy in enumerate(workload.policies)]
    policy_set = core.PolicySet(1, documents)
    subjects = [
        core.Subject.of(
            ids[agent.index],
            capabilities=agent.capabilities(),
            agent_type=agent.agent_type,
            deployment_env=agent.env,
        )
        for agent in workload.agents
    ]
    requests = [core.Request.of(p.action, p.resource, p.context()) for p in workload.probes]
    return policy_set, subjects, requests


def run_aigos(workload: Workload, profile: bool) -> tuple[EngineResult, Counter[str], str | None]:
    """Time ``evaluate`` per request; also the mix of outcomes by denial code, and a profile if asked."""
    from importlib.metadata import version

    policy_set, subjects, requests = aigos_inputs(workload)
    evaluate = core.evaluate
    pairs = [(subjects[p.agent], request) for p, request in zip(workload.probes, requests, strict=True)]
    for subject in subjects:  # warm the per-agent selection, as the server's cache is
        policy_set.effective(subject)
    mix: Counter[str] = Counter()
    for subject, request in pairs:  # and one untimed pass over the requests (caches, branch history)
        decision = evaluate(policy_set, subject, request)
        mix[decision.code or "allowed"] += 1
    latencies, verdicts = _time_each(
        (lambda s=subject, r=request: evaluate(policy_set, s, r).allowed) for subject, request in pairs
    )
    report = None
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(5):
            for subject, request in pairs:
                evaluate(policy_set, subject, request)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        report = out.getvalue()
    return EngineResult("AIGOS", version("aigos"), latencies, verdicts), mix, report


def _cedar_string(value: str) -> str:
    return json.dumps(value)  # a Cedar string literal is a JSON string for the characters used here


def _cedar_any_like(attribute: str, patterns: Iterable[str]) -> str:
    return "(" + " || ".join(f"context.{attribute} like {_cedar_string(p)}" for p in patterns) + ")"


def cedar_rule(rule: RuleSpec) -> str:
    """A rule as one Cedar ``permit`` / ``forbid`` (all request fields are in ``context``; cost in cents)."""
    if "*" in rule.actions:
        scope = "action"
    elif len(rule.actions) == 1:
        scope = f'action == Action::"{rule.actions[0]}"'
    else:
        scope = "action in [" + ", ".join(f'Action::"{a}"' for a in rule.actions) + "]"
    conditions = []
    if rule.resources != ("*",):
        conditions.append(_cedar_any_like("resource", rule.resources))
    if rule.tools:
        conditions.append("context has tool && " + _cedar_any_like("tool", rule.tools))
    if rule.domains:
        conditions.append("context has domain && " + _cedar_any_like("domain", rule.domains))
    if rule.cost_lt is not None:
        conditions.append(f"context.cost < {rule.cost_lt * 100}")
    if rule.cost_gte is not None:
        conditions.append(f"context.cost >= {rule.cost_gte * 100}")
    if rule.data_classes:
        values = ", ".join(_cedar_string(value) for value in rule.data_classes)
        conditions.append(f"context has data_class && [{values}].contains(context.data_class)")
    effect = "permit" if rule.effect == "allow" else "forbid"
    when = f" when {{ {' && '.join(conditions)} }}" if conditions else ""
    return f'@id("{rule.id}")\n{effect}(principal, {scope}, resource){when};'


def cedar_policies(workload: Workload, agent: AgentSpec) -> str:
    """Everything that applies to ``agent`` in Cedar: its capabilities, the domain deny list, its rules."""
    lines = [
        "forbid(principal, action, resource) when "
        f"{{ context has tool && !{_cedar_any_like('tool', agent.tools)} }};",
        "forbid(principal, action, resource) when "
        f"{{ context has domain && !{_cedar_any_like('domain', agent.domains)} }};",
    ]
    for policy in workload.policies_of(agent):
        if policy.deny_domains:
            lines.append(
                "forbid(principal, action, resource) when "
                f"{{ context has domain && {_cedar_any_like('domain', policy.deny_domains)} }};"
            )
    lines += [cedar_rule(rule) for rule in workload.rules_of(agent)]
    return "\n".join(lines)


def cedar_request(probe: Probe) -> dict[str, Any]:
    """A probe as a Cedar request (entity uids in their structured form)."""
    context: dict[str, Any] = {"resource": probe.resource, "cost": probe.cents}
    if probe.tool is not None:
        context["tool"] = probe.tool
    if probe.domain is not None:
        context["domain"] = probe.domain
    if probe.data_class is not None:
        context["data_class"] = probe.data_class
    return {
        "principal": {"type": "Agent", "id": str(probe.agent)},
        "action": {"type": "Action", "id": probe.action},
        "resource": {"type": "Resource", "id": probe.resource},
        "context": context,
    }


def run_cedar(workload: Workload) -> tuple[EngineResult, dict[str, Any]]:
    """Time ``cedarpy.is_authorized`` per request, then ``is_authorized_batch`` per agent."""
    from importlib.metadata import version

    import cedarpy

    entities = cedarpy.Entities.from_json_str("[]")
    sets = [cedarpy.PolicySet.from_str(cedar_policies(workload, agent)) for agent in workload.agents]
    requests = [(sets[p.agent], cedar_request(p)) for p in workload.probes]
    authorize = cedarpy.is_authorized
    for policies, request in requests[:1_000]:  # warm up
        authorize(request, policies, entities)

    def call(policies: Any, request: dict[str, Any]) -> bool:
        result = authorize(request, policies, entities)
        if result.diagnostics.errors:
            raise RuntimeError(f"cedar evaluation errors: {result.diagnostics.errors}")
        return bool(result.allowed)

    latencies, verdicts = _time_each(
        (lambda p=policies, r=request: call(p, r)) for policies, request in requests
    )
    by_agent: dict[int, list[dict[str, Any]]] = {}
    for probe, (_, request) in zip(workload.probes, requests, strict=True):
        by_agent.setdefault(probe.agent, []).append(request)
    start = time.perf_counter_ns()
    for agent, batch in by_agent.items():
        cedarpy.is_authorized_batch(batch, sets[agent], entities)
    batch_ns = time.perf_counter_ns() - start
    batch = {
        "batches": len(by_agent),
        "requests": len(requests),
        "mean_us": round(batch_ns / len(requests) / 1000, 2),
        "decisions_per_second": round(len(requests) / batch_ns * 1e9),
    }
    note = "one pre-parsed PolicySet per agent; is_authorized per call"
    return EngineResult("cedarpy", version("cedarpy"), latencies, verdicts, note), batch


CASBIN_MODEL = """
[request_definition]
r = act, res, tool, dom, cost, dclass
r2 = tool
r3 = dom

[policy_definition]
p = act, res, tool, dom, cmin, cmax, dclass, eft
p2 = tool
p3 = dom

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))
e2 = some(where (p.eft == allow))
e3 = some(where (p.eft == allow))

[matchers]
m = (p.act == "*" || r.act == p.act) && keyMatch(r.res, p.res) \
  && (p.tool == "*" || (r.tool != "" && keyMatch(r.tool, p.tool))) \
  && (p.dom == "*" || (r.dom != "" && globMatch(r.dom, p.dom))) \
  && r.cost >= num(p.cmin) && r.cost < num(p.cmax) \
  && (p.dclass == "*" || r.dclass == p.dclass)
m2 = r2.tool == "" || keyMatch(r2.tool, p2.tool)
m3 = r3.dom == "" || globMatch(r3.dom, p3.dom)
"""


def casbin_lines(rule: RuleSpec) -> list[list[str]]:
    """A rule as casbin policy lines: one per combination of its patterns ("*" = no condition)."""
    cmin = str(rule.cost_gte) if rule.cost_gte is not None else "-inf"
    cmax = str(rule.cost_lt) if rule.cost_lt is not None else "inf"
    return [
        [action, resource, tool, domain, cmin, cmax, dclass, rule.effect]
        for action, resource, tool, domain, dclass in itertools.product(
            ("*",) if "*" in rule.actions else rule.actions,
            rule.resources,
            rule.tools or ("*",),
            rule.domains or ("*",),
            rule.data_classes or ("*",),
        )
    ]


def casbin_enforcer(workload: Workload, agent: AgentSpec) -> Any:
    """One enforcer holding what applies to ``agent``: rules, domain deny list (p), capabilities (p2, p3)."""
    import casbin

    model = casbin.model.Model()
    model.load_model_from_text(CASBIN_MODEL)
    enforcer = casbin.Enforcer(model)
    enforcer.add_function("num", float)  # policy values are strings; costs compare as numbers
    lines: dict[tuple[str, ...], None] = {}  # casbin refuses duplicate lines; they change nothing
    for policy in workload.policies_of(agent):
        for pattern in policy.deny_domains:
            lines[("*", "*", "*", pattern, "-inf", "inf", "*", "deny")] = None
    for rule in workload.rules_of(agent):
        for line in casbin_lines(rule):
            lines[tuple(line)] = None
    enforcer.add_named_policies("p", [list(line) for line in lines])
    enforcer.add_named_policies("p2", [[tool] for tool in agent.tools])
    enforcer.add_named_policies("p3", [[domain] for domain in agent.domains])
    return enforcer


def run_casbin(workload: Workload, count: int) -> EngineResult:
    """Time three ``enforce`` calls per request (tool capability, domain capability, rules), short-circuit."""
    from importlib.metadata import version

    logging.getLogger("casbin").setLevel(logging.ERROR)  # it logs every denial as a warning otherwise
    probes = workload.probes[:count]
    enforcers = {p.agent: casbin_enforcer(workload, workload.agents[p.agent]) for p in probes}
    any_enforcer = next(iter(enforcers.values()))
    tools_ctx, domains_ctx = any_enforcer.new_enforce_context("2"), any_enforcer.new_enforce_context("3")

    def call(enforcer: Any, probe: Probe) -> bool:
        tool, domain = probe.tool or "", probe.domain or ""
        return bool(
            enforcer.enforce(tools_ctx, tool)
            and enforcer.enforce(domains_ctx, domain)
            and enforcer.enforce(
                probe.action, probe.resource, tool, domain, probe.cents / 100, probe.data_class or ""
            )
        )

    latencies, verdicts = _time_each((lambda e=enforcers[p.agent], p=p: call(e, p)) for p in probes)
    lines = sum(len(e.get_named_policy("p")) for e in enforcers.values()) / len(enforcers)
    note = f"one enforcer per agent (~{lines:.0f} policy lines each); first {len(probes)} requests"
    return EngineResult("pycasbin", version("pycasbin"), latencies, verdicts, note)


def run_inprocess(
    workload: Workload, *, peers: bool, casbin_requests: int, profile: bool, repeat: int = 1
) -> dict[str, Any]:
    """Part 1: every engine on the same requests; agreement with AIGOS and ratios; AIGOS ``repeat`` times."""
    aigos, mix, profile_text = run_aigos(workload, profile)
    runs = [aigos.summary()] + [run_aigos(workload, False)[0].summary() for _ in range(repeat - 1)]
    results = [aigos]
    cedar_batch = None
    if peers:
        cedar, cedar_batch = run_cedar(workload)
        results += [cedar, run_casbin(workload, casbin_requests)]
    base = aigos.summary()
    engines = []
    for result in results:
        summary = result.summary()
        agree = sum(a == b for a, b in zip(result.verdicts, aigos.verdicts, strict=False))
        summary["agreement"] = {"same_verdict": agree, "compared": len(result.verdicts)}
        summary["disagreements"] = [
            {"probe": index, **workload.probes[index].__dict__, "aigos": aigos.verdicts[index]}
            for index, (a, b) in enumerate(zip(result.verdicts, aigos.verdicts, strict=False))
            if a != b
        ][:5]
        summary["ratio_p50"] = round(summary["p50_us"] / base["p50_us"], 1)
        summary["ratio_p99"] = round(summary["p99_us"] / base["p99_us"], 1)
        engines.append(summary)
    allowed = sum(aigos.verdicts)
    return {
        "engines": engines,
        "aigos_runs": runs,
        "aigos_worst": {
            key: max(run[key] for run in runs) for key in ("p50_us", "p99_us", "p999_us", "max_us")
        },
        "cedarpy_batch": cedar_batch,
        "mix": dict(mix.most_common()),
        "allowed": allowed,
        "denied": len(aigos.verdicts) - allowed,
        "profile": profile_text,
    }


# -- part 2: over HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpFixture:
    """What the HTTP scenarios need: every check request of the pool, and the expected verdicts."""

    checks: list[bytes]
    verified: int
    mismatches: list[dict[str, Any]]
    agents: int
    policies: int
    rules: int
    setup_seconds: float


def _check_body(probe: Probe) -> bytes:
    return json.dumps(
        {"action": probe.action, "resource": probe.resource, "context": probe.context()}
    ).encode()


def prepare_http(
    server: ServerProcess,
    admin_token: str,
    workload: Workload,
    agents: int,
    stage: Callable[[str], None] = lambda _name: None,
) -> HttpFixture:
    """Sign up a tenant, register the agents, create the policies, verify a sample of verdicts over HTTP.

    ``stage`` is called with ``"agents"`` once the agents are registered and ``"policies"`` once the
    policies are created (the memory snapshots are taken there).
    """
    started = time.monotonic()
    with httpx.Client(base_url=server.base_url, timeout=60.0, trust_env=False) as client:
        signup = client.post(
            "/v1/tenants",
            json={
                "name": "Bench",
                "slug": f"bench-{secrets.token_hex(4)}",
                "owner_email": "bench@example.com",
                "owner_password": "correct horse battery staple",
                "plan_tier": "enterprise",
            },
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        signup.raise_for_status()
        admin = {"Authorization": f"Bearer {signup.json()['api_key']['key']}"}
        ids: list[str] = []
        tokens: list[str] = []
        for agent in workload.agents[:agents]:
            registered = client.post(
                "/v1/agents/register",
                json={
                    "name": f"bench-agent-{agent.index}",
                    "agent_type": agent.agent_type,
                    "deployment_env": agent.env,
                    "capabilities": agent.capabilities(),
                },
                headers=admin,
            )
            registered.raise_for_status()
            ids.append(registered.json()["agent_id"])
            tokens.append(registered.json()["identity_token"])
        stage("agents")
        created = rules = 0
        for policy in workload.policies:
            kind, _, value = policy.target.partition(":")
            if kind == "agent" and int(value) >= agents:
                continue  # an agent not registered over HTTP
            client.post("/v1/policies", json=policy.document(ids), headers=admin).raise_for_status()
            created += 1
            rules += len(policy.rules)
        stage("policies")
        probes = [probe for probe in workload.probes if probe.agent < agents][:HTTP_POOL]
        policy_set, subjects, _ = aigos_inputs(workload)
        mismatches = []
        for probe in probes[:HTTP_VERIFY]:
            answer = client.post(
                "/v1/policies/check",
                content=_check_body(probe),
                headers={
                    "Authorization": f"Bearer {tokens[probe.agent]}",
                    "Content-Type": "application/json",
                },
            )
            answer.raise_for_status()
            got = answer.json()
            request = core.Request.of(probe.action, probe.resource, probe.context())
            expected = core.evaluate(policy_set, subjects[probe.agent], request)
            if (got["allowed"], got["code"]) != (expected.allowed, expected.code):
                mismatches.append({**probe.__dict__, "http": got["code"], "inprocess": expected.code})
    checks = [
        build_request(
            "POST",
            "/v1/policies/check",
            headers={"Authorization": f"Bearer {tokens[probe.agent]}", "Content-Type": "application/json"},
            body=_check_body(probe),
        )
        for probe in probes
    ]
    return HttpFixture(
        checks=checks,
        verified=min(len(probes), HTTP_VERIFY),
        mismatches=mismatches[:5] + ([{"more": len(mismatches) - 5}] if len(mismatches) > 5 else []),
        agents=agents,
        policies=created,
        rules=rules,
        setup_seconds=time.monotonic() - started,
    )


def http_requests_for(concurrency: int, override: int | None) -> int:
    """Checks timed at ``concurrency``: ``--http-requests`` when given, else the default for it."""
    if override is not None:
        return override
    return DEFAULT_HTTP_REQUESTS.get(concurrency, DEFAULT_HTTP_REQUESTS_LOADED)


async def warm_workers(server: ServerProcess, checks: list[bytes], concurrency: int) -> dict[str, int]:
    """Send the whole pool once over ``concurrency`` connections (every worker compiles what it needs);
    the statuses other than 200 that came back, with their counts."""
    async with HttpLoadClient(HOST, server.port, checks, concurrency=concurrency) as client:
        await client.warm()
        return {str(status): count for status, count in client.refused.items()}


@dataclass(frozen=True)
class Soak:
    """Checks at one concurrency for a while: RSS samples, and the figures over all of it."""

    seconds: float
    concurrency: int
    interval: float
    samples: list[Snapshot]
    figures: Figures | None
    #: The samples the slope is fitted on begin this many seconds in (the rest is warm-up).
    warmup_seconds: float
    #: pid -> growth of its RSS after the warm-up, MB per minute (``None``: too few samples).
    slopes: dict[int, float | None]


async def soak(
    server: ServerProcess, checks: list[bytes], concurrency: int, seconds: float, interval: float, rate: float
) -> Soak:
    """Load the check at ``concurrency`` for ``seconds``, reading every process's RSS each ~``interval`` s.

    The load runs in chunks of about ``interval`` seconds (``rate``: checks per second expected) and the
    RSS is read between chunks, never while a request is timed.
    """
    series = Series(server.pid, interval)
    latencies: list[int] = []
    wall = 0.0
    chunk = max(concurrency, int(rate * interval))
    async with HttpLoadClient(HOST, server.port, checks, concurrency=concurrency) as client:
        await client.warm()
        cpu_before = cpu_seconds(server.pid)
        series.started = time.monotonic()
        series.sample()
        while series.elapsed < seconds:
            result = await client.run(chunk)
            latencies.extend(result.latencies_ns)
            wall += result.wall_seconds
            series.sample()
        server_cpu = cpu_seconds(server.pid) - cpu_before
        refused = {str(status): count for status, count in client.refused.items()}
    latencies.sort()
    figures = (
        Figures.of_latencies(
            latencies, wall, server_cpu_seconds=server_cpu, refused=refused, errors=sum(refused.values())
        )
        if latencies
        else None
    )
    warmup = series.elapsed / 3
    pids = worker_pids(series.samples[0])
    slopes = {pid: slope_mb_per_minute(series.samples, pid, warmup) for pid in pids}
    return Soak(seconds, concurrency, interval, series.samples, figures, warmup, slopes)


def run_http(workload: Workload, runner: LoadRunner, args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: two workers on PostgreSQL + Redis beside the floor; set up over the API, load the check.

    Memory is read at start, after the agents, after the policies, after a first pass of checks (each
    worker has compiled what it serves) and after the soak. Each timed phase runs ``--repeat`` times, each
    time right after the floor's.
    """
    agents = args.http_agents or args.agents
    admin_token = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="aigos-bench-policy-") as tmp, postgres_environment() as env:
        env = {
            **env,
            "AIGOS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
            # The per-key API limit (60/min by default) would cap the setup's registrations and policies.
            "AIGOS_DEFAULT_RATE_LIMIT_RPM": "10000000",
            "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
            # Tokens name their issuer; a deployment configures it (the raw client sends ``Host: x``).
            "AIGOS_ISSUER": "https://aigos.bench.example",
        }
        server = aigos_server(Path(tmp) / "aigos", env, name="pg-2w", workers=HTTP_WORKERS)
        floor = floor_server(Path(tmp) / "floor", env, name="floor-2w", workers=HTTP_WORKERS)
        receiver = None
        if args.otel:
            from tests.otlp import OtlpReceiver  # the otel extra's protobuf types: only when asked for

            receiver = OtlpReceiver()
        # The same server with metrics off, and with traces on, on the same database (each started once
        # the set-up is done): what each costs, timed right after the check as it ships.
        variants: list[tuple[str, ServerProcess]] = []
        if args.metrics_off:
            quiet_env = {**env, "AIGOS_METRICS_ENABLED": "false"}
            quiet = aigos_server(Path(tmp) / "aigos-quiet", quiet_env, name="pg-2w-metrics-off", workers=2)
            variants.append((METRICS_OFF, quiet))
        if receiver is not None:
            traced_env = {
                **env,
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": str(args.otel_sample),
            }
            traced = aigos_server(Path(tmp) / "aigos-traced", traced_env, name="pg-2w-otel", workers=2)
            variants.append((OTEL_ON, traced))
        with server, floor, contextlib.ExitStack() as stack:
            if receiver is not None:
                stack.enter_context(receiver)
            memory = [Snapshot.take(server.pid, "start (tenant signed up)")]
            fixture = prepare_http(
                server,
                admin_token,
                workload,
                agents,
                lambda name: memory.append(Snapshot.take(server.pid, f"{name} loaded")),
            )
            memory[1:] = [
                dataclasses.replace(memory[1], stage=f"{fixture.agents:,} agents registered"),
                dataclasses.replace(memory[2], stage=f"{fixture.policies:,} policies created"),
            ]
            warm_errors = runner.run(warm_workers(server, fixture.checks, max(args.concurrency)))
            memory.append(Snapshot.take(server.pid, "after a first pass of checks"))
            for label, variant in variants:
                stack.enter_context(variant)
                errors = runner.run(warm_workers(variant, fixture.checks, max(args.concurrency)))
                warm_errors.update({f"{k} ({label})": v for k, v in errors.items()})
            runs: list[Row] = []
            for run in range(1, args.repeat + 1):
                for c in args.concurrency:
                    count = http_requests_for(c, args.http_requests)
                    figures, floor_figures = runner.run(
                        timed_pair(server, floor, fixture.checks, concurrency=c, count=count, warmup=None)
                    )
                    runs.append(Row.paired("check", c, run, figures, floor_figures))
                    for label, variant in variants:
                        # Right after the check as it ships, against the same floor run.
                        other, _ = runner.run(
                            timed_pair(variant, None, fixture.checks, concurrency=c, count=count, warmup=None)
                        )
                        runs.append(Row.paired(label, c, run, other, floor_figures))
            soaked = None
            if args.soak > 0:
                loaded = [r for r in runs if r.concurrency == SOAK_CONCURRENCY]
                rate = loaded[-1].figures.per_second if loaded else 2_000.0
                soaked = runner.run(
                    soak(server, fixture.checks, SOAK_CONCURRENCY, args.soak, args.soak_interval, rate)
                )
                memory.append(Snapshot.take(server.pid, f"after the soak ({args.soak:g} s)"))
        problems = [
            f"{s.name}: exit code {s.exit_code} after SIGTERM"
            for s in (server, floor, *(variant for _, variant in variants))
            if not s.stopped_cleanly
        ]
        if receiver is not None:
            sampled = [span for span in receiver.spans if span.name == "POST /v1/policies/check"]
            if not sampled:
                problems.append("traces on, but the OTLP receiver got no check spans")
        if warm_errors:
            problems.append(f"non-200 answers to the first pass of checks (by status: {warm_errors})")
        if soaked is not None and soaked.figures is not None and soaked.figures.errors:
            problems.append(f"non-200 answers during the soak (by status: {soaked.figures.refused})")
        tail = server.output_tail(30)
        if tail and (problems or any(row.figures.errors for row in runs)):
            problems.append("server output:\n" + tail)
    return {
        "workers": HTTP_WORKERS,
        "agents": fixture.agents,
        "policies": fixture.policies,
        "rules": fixture.rules,
        "pool": len(fixture.checks),
        "setup_seconds": round(fixture.setup_seconds, 1),
        "verified": fixture.verified,
        "mismatches": fixture.mismatches,
        "rows": runs,
        "memory": memory,
        "soak": soaked,
        "problems": problems,
        "client_event_loop": runner.loop_name,
        "spans_received": None if receiver is None else len(receiver.spans),
    }


def by_phase(rows: list[Row]) -> list[list[Row]]:
    """The rows grouped by phase (label and concurrency), in the order first seen."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.label, row.concurrency), []).append(row)
    return list(groups.values())


def with_worst(rows: list[Row]) -> list[Row]:
    """Each phase's runs followed by its worst row (when there is more than one run)."""
    out: list[Row] = []
    for group in by_phase(rows):
        out += group
        if len(group) > 1:
            out.append(worst(group))
    return out


# -- report ------------------------------------------------------------------------------------------


def memory_figures(http: dict[str, Any]) -> dict[str, Any]:
    """Bytes per agent and per compiled rule, the largest worker RSS, the soak's slope."""
    memory: list[Snapshot] = http["memory"]
    start, agents, _policies, compiled = memory[:4]
    workers = worker_pids(start)
    peak = max(s.processes[p][1] for s in memory for p in workers if p in s.processes)
    soaked: Soak | None = http["soak"]
    if soaked is not None:
        peak = max([peak, *(s.processes[p][1] for s in soaked.samples for p in workers if p in s.processes)])
    slopes = [v for v in (soaked.slopes.values() if soaked else ()) if v is not None]
    return {
        # Registration goes through one keep-alive connection, hence one worker; the whole tree is counted.
        "bytes_per_agent": (agents.total - start.total) / max(1, http["agents"]),
        # Each worker compiles the policies it serves: counted over all workers, per rule created.
        "bytes_per_rule": (compiled.of(workers) - agents.of(workers)) / max(1, http["rules"]),
        "worker_peak_mb": peak / MB,
        "slope_mb_per_minute": max(slopes) if slopes else None,
    }


def verdicts(data: dict[str, Any]) -> list[Target]:
    """The issue's targets, checked against what was measured (over ``--repeat`` runs: the worst)."""
    out = [
        Target(
            "in-process p99, every run",
            data["inprocess"]["aigos_worst"]["p99_us"],
            TARGETS["inprocess_p99_us"],
            "µs",
        )
    ]
    http = data.get("http")
    if not http:
        return out
    phases = {
        (g[0].label, g[0].concurrency): worst(g) if len(g) > 1 else g[0] for g in by_phase(http["rows"])
    }
    for (label, c), off in phases.items():
        on = phases.get(("check", c))
        if label != METRICS_OFF or on is None:
            continue
        if c == 1:
            out.append(
                Target(
                    "p99 metrics add at c=1",
                    on.figures.p99_us - off.figures.p99_us,
                    TARGETS["metrics_p99_added_us"],
                    "µs",
                )
            )
        if c == SOAK_CONCURRENCY:
            out.append(
                Target(
                    f"checks/s at c={c}, metrics on / off",
                    on.figures.per_second / off.figures.per_second,
                    TARGETS["metrics_per_second_ratio"],
                    "x",
                    below=False,
                )
            )
    for group in by_phase(http["rows"]):
        row = worst(group) if len(group) > 1 else group[0]
        if row.label != "check":
            continue
        f, r = row.figures, row.ratios or {}
        if row.concurrency == 1:
            if r.get("p99_us") is not None:
                out.append(
                    Target("check p99 at c=1 / floor p99", r["p99_us"] or 0.0, TARGETS["p99_over_floor"], "x")
                )
            out.append(Target("check p99 at c=1", f.p99_us / 1000, TARGETS["http_p99_ms"], "ms"))
            out.append(Target("check max at c=1", f.max_us / 1000, TARGETS["http_max_ms"], "ms"))
        if row.concurrency == SOAK_CONCURRENCY:
            if r.get("per_second") is not None:
                out.append(
                    Target(
                        f"checks/s at c={row.concurrency} / floor's",
                        r["per_second"] or 0.0,
                        TARGETS["per_second_over_floor"],
                        "x",
                        below=False,
                    )
                )
            out.append(
                Target(
                    f"checks/s at c={row.concurrency}, {http['workers']} workers",
                    f.per_second,
                    TARGETS["checks_per_second"],
                    "/s",
                    below=False,
                )
            )
    mem = memory_figures(http)
    out.append(
        Target(
            f"RSS per worker, {http['agents']:,} agents, {http['policies']:,} policies",
            mem["worker_peak_mb"],
            TARGETS["worker_rss_mb"],
            "MB",
        )
    )
    if mem["slope_mb_per_minute"] is not None:
        out.append(
            Target(
                "RSS growth per worker over the soak",
                mem["slope_mb_per_minute"],
                TARGETS["rss_slope_mb_per_minute"],
                "MB/min",
            )
        )
    return out


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Both parts; the whole report."""
    date = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    workload = build_workload(args.agents, args.rules, args.requests, args.seed, args.policies)
    inprocess = run_inprocess(
        workload,
        peers=not args.skip_peers,
        casbin_requests=args.casbin_requests,
        profile=args.profile,
        repeat=args.repeat,
    )
    data: dict[str, Any] = {
        "benchmark": "policy",
        "what": "policy decisions in process (AIGOS, cedarpy, pycasbin) and POST /v1/policies/check",
        "date": date,
        "machine": machine_info(),
        "note": "numbers are from one run on this machine; read them as ratios to the same run's floor",
        "settings": {
            "agents": args.agents,
            "rules_per_agent": args.rules,
            "policies": len(workload.policies),
            "agents_with_own_policy": len(workload.policies) - SHARED_POLICIES,
            "rules_total": sum(len(p.rules) for p in workload.policies),
            "requests": args.requests,
            "seed": args.seed,
            "repeat": args.repeat,
            "soak_seconds": args.soak,
        },
        "inprocess": inprocess,
    }
    if not args.skip_http:
        with load_runner() as runner:
            data["http"] = run_http(workload, runner, args)
    data["targets"] = verdicts(data)
    data["elapsed_seconds"] = round(time.monotonic() - started, 1)
    data["load_average_1m"] = {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)}
    return data


def format_table(data: dict[str, Any]) -> str:
    """The report as plain text."""
    machine, settings, load = data["machine"], data["settings"], data["load_average_1m"]
    inproc = data["inprocess"]
    lines = [
        f"AIGOS policy benchmark: {data['what']}",
        f"machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['python']}, {machine['platform']}",
        f"date: {data['date']}; run {data['elapsed_seconds']:.0f} s",
        f"note: {data['note']} (1-min load average {load['start']:.2f} at start, {load['end']:.2f} at end)",
        f"workload: {settings['agents']:,} agents, {settings['policies']:,} policies "
        f"({settings['rules_total']:,} rules in all); the {settings['agents_with_own_policy']:,} agents "
        f"with a policy of their own see {settings['rules_per_agent']} rules each; "
        f"{settings['requests']:,} requests (seed {settings['seed']})",
        "mix (AIGOS): " + ", ".join(f"{code} {count}" for code, count in inproc["mix"].items()),
        "",
        "in process, per decision",
        f"{'engine':<16} {'requests':>8} {'p50 µs':>9} {'p99 µs':>9} {'p99.9 µs':>9} {'max µs':>9} "
        f"{'dec/s':>9} {'p50 x':>7} {'p99 x':>7} {'agree':>13}",
    ]
    for e in inproc["engines"]:
        agree = f"{e['agreement']['same_verdict']}/{e['agreement']['compared']}"
        name = f"{e['engine']} {e['version']}"
        lines.append(
            f"{name:<16} {e['requests']:>8} {e['p50_us']:>9.2f} {e['p99_us']:>9.2f} {e['p999_us']:>9.2f} "
            f"{e['max_us']:>9.1f} {e['decisions_per_second']:>9,} {e['ratio_p50']:>6.1f}x "
            f"{e['ratio_p99']:>6.1f}x {agree:>13}"
        )
    runs = inproc["aigos_runs"]
    if len(runs) > 1:
        for number, run in enumerate(runs, 1):
            lines.append(
                f"  AIGOS run {number:<5} {run['requests']:>8} {run['p50_us']:>9.2f} {run['p99_us']:>9.2f} "
                f"{run['p999_us']:>9.2f} {run['max_us']:>9.1f}"
            )
        w = inproc["aigos_worst"]
        lines.append(
            f"  AIGOS worst {'':>14} {w['p50_us']:>9.2f} {w['p99_us']:>9.2f} {w['p999_us']:>9.2f} "
            f"{w['max_us']:>9.1f}"
        )
    base = inproc["engines"][0]
    for e in inproc["engines"][1:]:
        lines.append(
            f"  {e['engine']} p50 {e['p50_us']:,.1f} µs = {e['ratio_p50']:g}x AIGOS "
            f"({base['p50_us']:.2f} µs); p99 {e['p99_us']:,.1f} µs = {e['ratio_p99']:g}x; {e['note']}"
        )
    batch = inproc.get("cedarpy_batch")
    if batch:
        lines.append(
            f"  cedarpy is_authorized_batch ({batch['batches']} batches, one per agent): "
            f"{batch['mean_us']:.1f} µs per decision, {batch['decisions_per_second']:,} decisions/s"
        )
    lines.append("(x = engine / AIGOS, same requests; agree = same allowed/denied verdict as AIGOS)")
    http = data.get("http")
    if http:
        lines += [
            "",
            f"over HTTP: POST /v1/policies/check, PostgreSQL + Redis, {http['workers']} workers, "
            f"{http['agents']:,} agents, {http['policies']:,} policies ({http['rules']:,} rules), pool of "
            f"{http['pool']:,} distinct checks ({http['client_event_loop']} client; set-up "
            f"{http['setup_seconds']:.0f} s)",
            f"verdicts checked against in-process AIGOS: {http['verified'] - len(http['mismatches'])}"
            f"/{http['verified']} equal",
            *format_rows(with_worst(http["rows"])),
        ]
        soaked: Soak | None = http["soak"]
        if soaked is not None and soaked.figures is not None:
            lines += [
                "",
                f"soak: {soaked.seconds:g} s of checks at c={soaked.concurrency}, RSS of every process read "
                f"between chunks of ~{soaked.interval:g} s of load",
                format_row("check (soak)", soaked.concurrency, "-", soaked.figures, None),
            ]
        memory: list[Snapshot] = http["memory"]
        lines += ["", *format_snapshots(memory, memory[0])]
        if soaked is not None:
            lines += ["", "RSS during the soak", *format_snapshots(soaked.samples, memory[0])]
            columns = names(memory[0])
            slopes = ", ".join(
                f"{columns.get(pid, pid)} {'-' if slope is None else f'{slope:+.2f}'} MB/min"
                for pid, slope in soaked.slopes.items()
            )
            lines.append(f"growth after the first {soaked.warmup_seconds:.0f} s (least squares): {slopes}")
        mem = memory_figures(http)
        lines.append(
            f"per agent registered: {mem['bytes_per_agent']:,.0f} bytes (all processes); per rule compiled: "
            f"{mem['bytes_per_rule']:,.0f} bytes (all workers together, after a first pass of checks)"
        )
    lines += ["", "targets", *format_targets(data["targets"])]
    problems = [
        f"{e['engine']}: {e['agreement']['compared'] - e['agreement']['same_verdict']} verdicts differ from "
        f"AIGOS, e.g. {e['disagreements'][:2]}"
        for e in inproc["engines"]
        if e["agreement"]["same_verdict"] != e["agreement"]["compared"]
    ]
    if http:
        problems += [f"HTTP verdict differs from in-process: {m}" for m in http["mismatches"]]
        problems += [
            f"{row.figures.errors} unexpected answers at c={row.concurrency} run {row.run} (by status: "
            f"{row.figures.refused})"
            for row in http["rows"]
            if row.figures.errors
        ]
        problems += http["problems"]
    lines += [f"WARNING: {problem}" for problem in problems]
    if inproc.get("profile"):
        lines += ["", "profile of AIGOS in process (5 passes, by own time):", inproc["profile"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=DEFAULT_AGENTS, help="Agents (default: 1,000).")
    parser.add_argument("--rules", type=int, default=DEFAULT_RULES, help="Rules applying to each agent (50).")
    parser.add_argument(
        "--requests", type=int, default=DEFAULT_REQUESTS, help="In-process requests (10,000)."
    )
    parser.add_argument(
        "--casbin-requests",
        type=int,
        default=DEFAULT_CASBIN_REQUESTS,
        help="Of those, how many pycasbin decides (it is slow; default 1,000).",
    )
    parser.add_argument(
        "--policies",
        type=int,
        default=DEFAULT_POLICIES,
        help=f"Policies in all: {SHARED_POLICIES} shared, then one of its own for each of the first agents "
        "(default: 1,000).",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="Seed of the workload.")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Run the timed phases this many times; print each and the worst.",
    )
    parser.add_argument(
        "--metrics-off",
        action="store_true",
        help="Also time the check on a server with metrics off (AIGOS_METRICS_ENABLED=false), right after "
        "each timed phase, and judge what metrics cost.",
    )
    parser.add_argument(
        "--otel",
        action="store_true",
        help="Also time the check on a server exporting traces over OTLP/HTTP to a local receiver "
        "(needs the otel extra), right after each timed phase.",
    )
    parser.add_argument(
        "--otel-sample",
        type=float,
        default=0.1,
        help="The traced server's sampling ratio (parentbased_traceidratio; default: 0.1).",
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=DEFAULT_SOAK_SECONDS,
        help=f"Seconds of checks at c={SOAK_CONCURRENCY} after the timed phases, RSS read throughout "
        f"(default: {DEFAULT_SOAK_SECONDS:g}; 600 for the 10-minute figure; 0: none).",
    )
    parser.add_argument(
        "--soak-interval",
        type=float,
        default=DEFAULT_SOAK_INTERVAL,
        help=f"Seconds between RSS readings during the soak (default: {DEFAULT_SOAK_INTERVAL:g}).",
    )
    parser.add_argument(
        "--http-agents", type=int, default=None, help="Agents registered over HTTP (default: all)."
    )
    parser.add_argument(
        "--http-requests",
        type=int,
        default=None,
        help=f"Checks timed per concurrency over HTTP (default: {DEFAULT_HTTP_REQUESTS[1]} at c=1, "
        f"{DEFAULT_HTTP_REQUESTS_LOADED} otherwise).",
    )
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=list(HTTP_CONCURRENCY),
        help="Comma-separated concurrency levels over HTTP (default: 1,32).",
    )
    parser.add_argument("--skip-http", action="store_true", help="Only the in-process part.")
    parser.add_argument(
        "--skip-peers", action="store_true", help="Only AIGOS in process (no cedarpy, pycasbin)."
    )
    parser.add_argument("--profile", action="store_true", help="Profile AIGOS's in-process run (cProfile).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of tables.")
    args = parser.parse_args(argv)
    for name in ("agents", "rules", "requests", "casbin_requests", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not SHARED_POLICIES <= args.policies <= SHARED_POLICIES + args.agents:
        parser.error(f"--policies must be between {SHARED_POLICIES} and --agents + {SHARED_POLICIES}")
    if args.soak < 0 or args.soak_interval <= 0:
        parser.error("--soak must be at least 0 and --soak-interval above 0")
    if args.rules < 5:
        parser.error("--rules must be at least 5 (tenant, type, environment and own rules)")
    if args.http_agents is not None and not 1 <= args.http_agents <= args.agents:
        parser.error("--http-agents must be between 1 and --agents")
    if args.http_requests is not None and args.http_requests < 1:
        parser.error("--http-requests must be at least 1")
    if any(c < 1 or c > 1024 for c in args.concurrency):
        parser.error("--concurrency levels must be between 1 and 1024")
    args.concurrency = sorted(set(args.concurrency))
    return args


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; returns the exit status."""
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the server is killed and the database and Redis keys cleaned up.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    data = run_all(args)
    print(json.dumps(data, indent=2, default=json_default) if args.json else format_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
