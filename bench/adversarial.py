"""Adversarial name globs: does one tenant's worst-case patterns stall the server for everyone?

One embedded ``aigos serve`` (one worker). A tenant stores a policy whose deny rules hold the worst name
globs the limits allow (``MAX_STARS`` stars, ``MAX_PATTERN`` characters: literal parts, parts with ``?``,
and ``*a*a*...*b``), then sends, for ``--seconds``, checks with a resource of 2,048 ``a`` (the longest a
check takes: no pattern matches, every part is searched) through ``POST /v1/policies/check``, and the same
patterns as drafts through ``POST /v1/policies/simulate``. Meanwhile a separate thread asks ``GET /health``
every 10 ms. Printed: ``/health`` p50 / p99 / max while under attack and at rest, and the attack requests'
p50 / p99 / max. The longest event-loop pause is read from the client side: the slowest ``/health``
answer under attack, minus the slowest at rest, bounds it from below.

Target (issue 27): ``/health`` p99 under 50 ms, no pause over 50 ms.

Run: ``.venv/bin/python bench/adversarial.py [--seconds S] [--rules N] [--patterns N]``.
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

from aigos.core import globs
from bench._server import aigos_server, embedded_environment

RESOURCE = "a" * 2048


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


def probe(base_url: str, seconds: float, attack: Any = None) -> tuple[list[float], list[float]]:
    """``/health`` latencies for ``seconds`` while ``attack`` (a callable returning latencies) runs."""
    health = HealthProbe(base_url)
    health.start()
    attacked: list[float] = []
    deadline = time.monotonic() + seconds
    if attack is None:
        time.sleep(seconds)
    else:
        while time.monotonic() < deadline:
            attacked.append(attack())
    health.stop.set()
    health.join()
    return health.latencies, attacked


def figures(label: str, values: list[float]) -> str:
    """``label: p50 / p99 / max (n)`` in ms."""
    if not values:
        return f"{label}: no samples"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{label:<32} p50 {statistics.median(ordered):8.2f} ms   p99 {p99:8.2f} ms   "
        f"max {ordered[-1]:8.2f} ms   (n={len(ordered)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each attack phase")
    parser.add_argument("--rules", type=int, default=50, help="deny rules in the stored policy")
    parser.add_argument("--patterns", type=int, default=20, help="resource patterns per rule")
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
            http = httpx.Client(base_url=server.base_url, timeout=600.0, trust_env=False)
            signup = http.post(
                "/v1/tenants",
                json={
                    "name": "Adversary",
                    "slug": f"adv-{secrets.token_hex(4)}",
                    "owner_email": f"adv-{secrets.token_hex(4)}@example.com",
                    "owner_password": "correct horse battery staple",
                    "plan_tier": "enterprise",
                },
                headers={"Authorization": f"Bearer {admin_token}"},
            )
            signup.raise_for_status()
            admin = {"Authorization": f"Bearer {signup.json()['api_key']['key']}"}
            agent = http.post("/v1/agents/register", json={"name": "adv"}, headers=admin)
            agent.raise_for_status()
            token = {"Authorization": f"Bearer {agent.json()['identity_token']}"}
            document = policy(args.rules, args.patterns)
            stored = http.post("/v1/policies", json=document, headers=admin)
            print(f"policy: {args.rules} rules x {args.patterns} patterns -> {stored.status_code}")
            if stored.status_code != 201:
                print(stored.text[:500])
            check_body = {"action": "read", "resource": RESOURCE}
            drafts = {
                "agent": {},
                "request": check_body,
                "policies": [document],
                "only_drafts": True,
            }

            def check() -> float:
                started = time.perf_counter()
                response = http.post("/v1/policies/check", json=check_body, headers=token)
                assert response.status_code == 200, response.text
                assert response.json()["allowed"], response.text
                return (time.perf_counter() - started) * 1e3

            def simulate() -> float:
                started = time.perf_counter()
                response = http.post("/v1/policies/simulate", json=drafts, headers=admin)
                assert response.status_code == 200, response.text
                return (time.perf_counter() - started) * 1e3

            check()  # the first check compiles the policy set
            rest, _ = probe(server.base_url, args.seconds)
            under_check, checks = probe(server.base_url, args.seconds, check)
            under_simulate, simulations = probe(server.base_url, args.seconds, simulate)
            http.close()

    print(f"patterns: {len(worst_patterns())} shapes, resource of {len(RESOURCE)} characters")
    print(figures("/health at rest", rest))
    print(figures("/health under checks", under_check))
    print(figures("/health under simulate", under_simulate))
    print(figures("POST /v1/policies/check", checks))
    print(figures("POST /v1/policies/simulate", simulations))
    worst = max([*under_check, *under_simulate], default=0.0)
    print(f"longest event-loop pause (client side, >=): {max(0.0, worst - max(rest, default=0.0)):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
