"""Adversarial policies at the limits: does one tenant stall the server for everyone?

One embedded ``aigos serve`` (one worker). For each plan (``--plans``, default free and enterprise), a
tenant on that plan:

1. fills its policies to the plan's limits: as many policies as its ``rules`` total allows, each with
   ``rules_per_policy`` rules of their own distinct action, as large as ``document_bytes`` and
   ``total_bytes`` allow; its first check then compiles the largest set the plan allows;
2. stores a policy of deny rules holding the worst name globs the limits allow (``MAX_STARS`` stars,
   ``MAX_PATTERN`` characters: literal parts, parts with ``?``, and ``*a*a*...*b``), and sends, for
   ``--seconds``, checks with a resource of 2,048 ``a`` (no pattern matches, every part is searched);
3. sends the same worst policy as ``drafts`` (the plan's limit) through ``POST /v1/policies/simulate``,
   each simulation compiling the drafts over the saved set;
4. fetches the agent's signed bundle (``GET /v1/policies/bundle``): every policy applies to it, so it is
   the largest bundle the plan allows.

Meanwhile a separate thread asks ``GET /health`` every 10 ms. Printed per phase: ``/health`` p50 / p99 /
max, the phase's requests, and the longest event-loop pause, read from the server's own lag monitor
(``aigos_event_loop_lag_max_seconds`` on ``/metrics``, the longest of the server's last few one-second
samples, read every half second throughout: the largest reading during a phase is its longest pause, a
pause of the previous phase's last seconds included).

Targets (issue 27): ``/health`` p99 under 50 ms, no pause over 50 ms.

Run: ``.venv/bin/python bench/adversarial.py [--seconds S] [--plans free,enterprise] [--patterns N]``.
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``http``.

from __future__ import annotations

import sys
from pathlib import Path

_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import secrets
import statistics
import tempfile
import threading
import time
from typing import Any

import httpx
import orjson

from aigos.core import globs
from aigos.server.tenancy.plans import PLANS, PolicyLimits
from bench._server import aigos_server, embedded_environment

RESOURCE = "a" * 2048
#: The server's default request body limit (``AIGOS_MAX_BODY_BYTES``).
BODY_BYTES = 1_048_576


def worst_patterns() -> list[str]:
    """Name globs at the limits that a backtracking matcher takes longest on (and no name here matches)."""
    stars = globs.MAX_STARS
    letters = "*a" * (stars - 1) + "*b"  # the issue's *a*a*a*a*b, with every star allowed
    per_part = (globs.MAX_PATTERN - stars) // stars
    literal = "*" + "*".join(["a" * (per_part - 1) + "c"] * (stars - 1)) + "*b"
    questions = "*" + "*".join(["a?" * (per_part // 2)] * (stars - 1)) + "*b"
    anchored = "a" * 100 + "*" + "?" * 100 + "b*" + "a" * 40
    patterns = [letters, literal[: globs.MAX_PATTERN], questions[: globs.MAX_PATTERN], anchored]
    for pattern in patterns:
        assert globs.name_glob_error(pattern) is None, (pattern, globs.name_glob_error(pattern))
    return patterns


def policy(rules: int, per_rule: int) -> dict[str, Any]:
    """A policy of ``rules`` deny rules, each with ``per_rule`` worst-case resource patterns."""
    patterns = worst_patterns()
    chosen = [patterns[i % len(patterns)] + "x" * (i // len(patterns) % 2) for i in range(per_rule)]
    chosen = [pattern[: globs.MAX_PATTERN] for pattern in chosen]
    return {
        "name": "adversarial",
        "rules": [
            {"id": f"r{n}", "effect": "deny", "actions": ["read"], "resources": chosen} for n in range(rules)
        ],
    }


class HealthProbe(threading.Thread):
    """``GET /health`` every ``interval`` seconds from its own thread and connection; latencies in ms."""

    def __init__(self, base_url: str, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.base_url, self.interval = base_url, interval
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=120.0, trust_env=False) as http:
            while not self.stop.is_set():
                started = time.perf_counter()
                http.get("/health").raise_for_status()
                self.latencies.append((time.perf_counter() - started) * 1e3)
                time.sleep(self.interval)


def probe(
    base_url: str, seconds: float, attack: Any = None, at_least: int = 0
) -> tuple[list[float], list[float]]:
    """``/health`` latencies for ``seconds`` (and ``at_least`` attacks) while ``attack`` (a callable
    returning its latency, or ``None`` when the tenant's rate limit refused it) runs."""
    health = HealthProbe(base_url)
    health.start()
    attacked: list[float] = []
    deadline = time.monotonic() + seconds
    if attack is None:
        time.sleep(seconds)
    else:
        while time.monotonic() < deadline or len(attacked) < at_least:
            latency = attack()
            if latency is not None:
                attacked.append(latency)
    health.stop.set()
    health.join()
    return health.latencies, attacked


def figures(label: str, values: list[float]) -> str:
    """``label: p50 / p99 / max (n)`` in ms."""
    if not values:
        return f"{label}: no samples"
    ordered = sorted(values)
    return (
        f"{label:<34} p50 {statistics.median(ordered):8.2f} ms   p99 {p99(ordered):8.2f} ms   "
        f"max {ordered[-1]:8.2f} ms   (n={len(ordered)})"
    )


def p99(values: list[float]) -> float:
    """The 99th percentile of ``values`` (sorted here)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


class PauseWatch(threading.Thread):
    """Reads the server's recent longest event-loop pause every half second; ``take`` gives the largest
    since the previous ``take``, in ms."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.stop = threading.Event()
        self._worst = 0.0
        self._lock = threading.Lock()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=120.0, trust_env=False) as http:
            while not self.stop.is_set():
                for line in http.get("/metrics").text.splitlines():
                    if line.startswith("aigos_event_loop_lag_max_seconds "):
                        with self._lock:
                            self._worst = max(self._worst, float(line.split()[1]) * 1e3)
                self.stop.wait(0.5)

    def take(self) -> float:
        with self._lock:
            worst, self._worst = self._worst, 0.0
        return worst


def filling(limits: PolicyLimits) -> list[dict[str, Any]]:
    """The most a plan's policies may hold, but for one policy's share: its ``rules`` in full policies,
    each document as large as ``document_bytes`` and its share of ``total_bytes`` allow (every rule its
    own action; the server stores each rule's defaults too, hence some room left)."""
    count = limits.rules // limits.rules_per_policy - 1  # the worst-pattern policy takes the last share
    room = (
        min(limits.document_bytes, limits.total_bytes // (count + 1)) - 1_024 - 100 * limits.rules_per_policy
    )
    made = []
    for p in range(count):
        base = p * limits.rules_per_policy
        rules = [
            {"id": f"r{n}", "effect": "allow", "actions": [f"act_{n}"], "resources": [f"res/{n}/*"]}
            for n in range(base, base + limits.rules_per_policy)
        ]
        document = {"name": f"fill {p}", "rules": rules}
        # Pad each rule with resource patterns while the document fits: its bytes count, as limits do.
        extra = 0
        while True:
            trial = [
                {**rule, "resources": [*rule["resources"], *_pads(n, extra + 1)]}
                for n, rule in enumerate(rules)
            ]
            if len(orjson.dumps({**document, "rules": trial})) > room or extra >= 99:
                break
            extra += 1
        document["rules"] = [
            {**rule, "resources": [*rule["resources"], *_pads(n, extra)]} for n, rule in enumerate(rules)
        ]
        made.append(document)
    return made


def _pads(n: int, count: int) -> list[str]:
    return [f"pad/{n}/{k}/*" for k in range(count)]


def worst_fitting(room: int, most_rules: int, patterns: int) -> dict[str, Any]:
    """The worst-pattern policy, as many rules of ``patterns`` patterns as ``room`` bytes hold."""
    rules = most_rules
    # The server stores each rule with its defaults (priority, conditions, ...): about 100 bytes more.
    while rules > 1 and len(orjson.dumps(policy(rules, patterns))) + 100 * rules > room:
        rules = rules * 9 // 10
    return policy(rules, patterns)


def attack_plan(base_url: str, admin_token: str, plan: str, args: argparse.Namespace) -> None:
    """Run the three phases for a tenant on ``plan`` and print what they did to the server."""
    limits = PLANS[plan].policy
    http = httpx.Client(base_url=base_url, timeout=600.0, trust_env=False)
    signup = http.post(
        "/v1/tenants",
        json={
            "name": f"Adversary {plan}",
            "slug": f"adv-{secrets.token_hex(4)}",
            "owner_email": f"adv-{secrets.token_hex(4)}@example.com",
            "owner_password": "correct horse battery staple",
            "plan_tier": plan,
        },
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    signup.raise_for_status()
    admin = {"Authorization": f"Bearer {signup.json()['api_key']['key']}"}
    agent = http.post("/v1/agents/register", json={"name": "adv"}, headers=admin)
    agent.raise_for_status()
    token = {"Authorization": f"Bearer {agent.json()['identity_token']}"}

    watch = PauseWatch(base_url)
    watch.start()
    time.sleep(1.0)
    watch.take()
    fill = filling(limits)
    worst = worst_fitting(limits.document_bytes - 1_024, limits.rules_per_policy, args.patterns)
    stored: list[int] = []
    for document in [*fill, worst]:
        response = http.post("/v1/policies", json=document, headers=admin)
        if response.status_code != 201:
            print(f"   refused: {response.text[:300]}")
        stored.append(response.status_code)
    pauses = {"storing the policies": watch.take()}
    rules = sum(len(document["rules"]) for document in fill) + len(worst["rules"])
    size = sum(len(orjson.dumps(document)) for document in [*fill, worst])
    print(f"\n== {plan} plan: {len(stored)} policies, {rules:,} rules, {size / 1024 / 1024:.1f} MiB")
    if set(stored) != {201}:
        print(f"   stored: {sorted(set(stored))} (not all 201)")

    check_body = {"action": "read", "resource": RESOURCE}
    # As many drafts as the plan allows, together within the server's request body limit (1 MiB).
    room = min(limits.document_bytes, BODY_BYTES // limits.drafts) - 1_024
    draft = worst_fitting(room, limits.rules_per_policy, args.patterns)
    drafts = {"agent": {}, "request": check_body, "policies": [draft] * limits.drafts}

    def check() -> float:
        started = time.perf_counter()
        response = http.post("/v1/policies/check", json=check_body, headers=token)
        assert response.status_code == 200, response.text
        assert response.json()["allowed"], response.text  # no deny pattern matches
        return (time.perf_counter() - started) * 1e3

    refused = 0

    def simulate() -> float | None:
        nonlocal refused
        started = time.perf_counter()
        response = http.post("/v1/policies/simulate", json=drafts, headers=admin)
        if response.status_code == 429:
            # The plan's requests per minute (the free plan's 300 run out within the phase): wait as told.
            refused += 1
            time.sleep(float(response.headers.get("Retry-After", "1")))
            return None
        assert response.status_code == 200, response.text
        return (time.perf_counter() - started) * 1e3

    def bundle() -> float:
        # Every policy applies to the agent: the largest bundle the plan allows, encoded, hashed and signed.
        started = time.perf_counter()
        response = http.get("/v1/policies/bundle", headers=token)
        assert response.status_code == 200, response.text[:300]
        return (time.perf_counter() - started) * 1e3

    def first_checks() -> float:
        # Each a new action: the set's first compile, then each action's rules worked out.
        started = time.perf_counter()
        for n in range(0, rules, max(1, rules // 20)):
            body = {"action": f"act_{n}", "resource": f"res/{n}/x"}
            response = http.post("/v1/policies/check", json=body, headers=token)
            assert response.status_code == 200, response.text
        return (time.perf_counter() - started) * 1e3

    rest, _ = probe(base_url, args.seconds)
    pauses["at rest"] = watch.take()
    under_compile, compiles = probe(base_url, 0.0, first_checks, at_least=1)
    pauses["compile + first checks"] = watch.take()
    under_check, checks = probe(base_url, args.seconds, check)
    pauses["worst-pattern checks"] = watch.take()
    under_simulate, simulations = probe(base_url, args.seconds, simulate, at_least=1)
    pauses["simulate with drafts"] = watch.take()
    under_bundle, bundles = probe(base_url, args.seconds, bundle, at_least=2)
    pauses["signed bundles"] = watch.take()
    watch.stop.set()
    watch.join()
    http.close()

    print(
        f"   worst patterns: {len(worst_patterns())} shapes x {args.patterns} per rule, "
        f"{len(worst['rules'])} rules; {limits.drafts} drafts; resource of {len(RESOURCE)} characters"
    )
    print("   " + figures("/health at rest", rest))
    print("   " + figures("/health under compile", under_compile))
    print("   " + figures("/health under checks", under_check))
    print("   " + figures("/health under simulate", under_simulate))
    print("   " + figures("/health under bundles", under_bundle))
    print("   " + figures("compile + 20 first checks", compiles))
    print("   " + figures("POST /v1/policies/check", checks))
    print("   " + figures("POST /v1/policies/simulate", simulations) + f"   ({refused} refused: 429)")
    print("   " + figures("GET /v1/policies/bundle", bundles))
    print("   longest event-loop pause (the server's lag monitor):")
    for phase, pause in pauses.items():
        print(f"     {phase:<28} {pause:9.2f} ms")
    under = [*under_compile, *under_check, *under_simulate, *under_bundle]
    print(
        f"   targets: /health p99 under attack {p99(under):.2f} ms (< 50), "
        f"longest pause {max(pauses.values()):.2f} ms (<= 50)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the check and simulate phases")
    parser.add_argument("--plans", default="free,enterprise", help="plans to attack from, comma-separated")
    parser.add_argument("--patterns", type=int, default=20, help="worst-case resource patterns per rule")
    args = parser.parse_args()

    admin_token = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as workdir, embedded_environment() as env:
        env = {
            **env,
            "AIGOS_BOOTSTRAP_ADMIN_TOKEN": admin_token,
            "AIGOS_DEFAULT_RATE_LIMIT_RPM": "10000000",
            "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
        }
        with aigos_server(Path(workdir), env) as server:
            for plan in args.plans.split(","):
                attack_plan(server.base_url, admin_token, plan.strip(), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
