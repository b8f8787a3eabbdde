"""Load for fault tests against a real ``aigos serve``: many clients registering agents, every answer counted.

A fault test asserts on the tally, never on timings: how many answers were 2xx, how many 503 and with
which code, how many 500s (none), how many connections ended without an answer (none), and whether every
agent answered 201 is there afterwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.conftest import ADMIN_TOKEN
from tests.helpers import bearer, signup

#: A server under a fault test: limits high enough that only the fault refuses requests.
LOAD_ENV = {
    "AIGOS_DEFAULT_RATE_LIMIT_RPM": "1000000",
    "AIGOS_DEFAULT_RATE_LIMIT_RPH": "100000000",
    "AIGOS_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
    "AIGOS_LOG_LEVEL": "warning",
}


@dataclass
class Tally:
    """What the clients got back."""

    #: ``"201"``, ``"503 STORAGE_FULL"``, ``"transport ReadError"``, ``"timeout"``, ...
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Ids of the agents answered 201.
    created: list[str] = field(default_factory=list)
    #: Names of the agents answered 201; of those refused (a 503 that changed nothing, ...); of those whose
    #: outcome the client cannot know (503 ``OUTCOME_UNKNOWN``, no answer).
    acknowledged: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    #: 503 answers without ``Retry-After``.
    without_retry_after: int = 0

    def count(self, prefix: str) -> int:
        """Answers whose outcome starts with ``prefix`` (``"2"``: every 2xx)."""
        return sum(n for outcome, n in self.outcomes.items() if outcome.startswith(prefix))

    @property
    def errors(self) -> int:
        """5xx answers other than 503 (a 500 is a bug, a 503 an outage told as one)."""
        return self.count("5") - self.count("503")

    @property
    def unanswered(self) -> int:
        """Requests that got no answer at all: a connection closed, or the client's timeout."""
        return self.count("transport") + self.count("timeout")

    def note(self, name: str, response: httpx.Response) -> None:
        """Count the answer to registering ``name``."""
        if response.status_code == 201:
            self.created.append(response.json()["id"])
            self.acknowledged.add(name)
            self.outcomes["201"] += 1
            return
        problem = response.headers.get("content-type", "").endswith("json")
        code = response.json().get("code") if problem else None
        (self.unknown if code == "OUTCOME_UNKNOWN" else self.refused).add(name)
        self.outcomes[f"{response.status_code} {code}"] += 1
        if response.status_code == 503 and "Retry-After" not in response.headers:
            self.without_retry_after += 1


async def enterprise_tenant(base_url: str) -> dict[str, str]:
    """Sign up a tenant on the enterprise plan (no agent cap); its owner key's Authorization header."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as client:
        tenant = await signup(client, "Faults", plan_tier="enterprise", headers=bearer(ADMIN_TOKEN))
        return tenant.headers


async def register_agents(
    base_url: str,
    headers: dict[str, str],
    *,
    clients: int,
    requests: int,
    client_timeout: float,
    tally: Tally | None = None,
) -> Tally:
    """``clients`` clients registering agents one after another, ``requests`` in all.

    Pass a ``tally`` to watch it fill while the load runs (to start a fault after the first answers).
    """
    tally = tally or Tally()
    left = requests

    async def client_loop(number: int) -> None:
        nonlocal left
        async with httpx.AsyncClient(base_url=base_url, timeout=client_timeout, trust_env=False) as client:
            while left > 0:
                left -= 1
                name = f"load-{number}-{left}"
                try:
                    response = await client.post("/v1/agents", json={"name": name}, headers=headers)
                except httpx.TimeoutException:
                    tally.outcomes["timeout"] += 1
                    tally.unknown.add(name)
                except httpx.TransportError as error:
                    tally.outcomes[f"transport {type(error).__name__}"] += 1
                    tally.unknown.add(name)
                else:
                    tally.note(name, response)

    await asyncio.gather(*(client_loop(number) for number in range(clients)))
    return tally


async def missing_agents(base_url: str, headers: dict[str, str], ids: list[str]) -> list[str]:
    """The agents of ``ids`` the server does not know (each answered 201 earlier)."""
    missing: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as client:
        for agent_id in ids:
            response = await client.get(f"/v1/agents/{agent_id}", headers=headers)
            if response.status_code != 200:
                missing.append(agent_id)
    return missing


async def agent_names(base_url: str, headers: dict[str, str]) -> set[str]:
    """The names of every agent of the tenant ``headers`` authenticates."""
    names: set[str] = set()
    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as client:
        page = 1
        while True:
            response = await client.get("/v1/agents", params={"page": page, "limit": 100}, headers=headers)
            response.raise_for_status()
            agents = response.json()["agents"]
            names.update(agent["name"] for agent in agents)
            if len(agents) < 100:
                return names
            page += 1
