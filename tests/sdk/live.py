"""A real ``aigos serve`` process for SDK tests, with one tenant whose admin key registers agents."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.helpers import bearer, signup_at
from tests.server_process import ServerProcess


@dataclass
class LiveServer:
    """A started server and the owner key of a fresh tenant on it."""

    process: ServerProcess
    api_key: str
    tenant_id: str

    @property
    def base_url(self) -> str:
        """Where the server listens."""
        return self.process.base_url

    def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """A request with the tenant's admin key."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.request(method, self.base_url + path, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]

    def trigger(self, agent_id: str, command: str, reason: str = "test") -> dict[str, object]:
        """``POST /v1/kill-switch/trigger`` for one agent; asserts 201."""
        response = self.admin(
            "POST",
            "/v1/kill-switch/trigger",
            json={"agent_id": agent_id, "command": command, "reason": reason},
        )
        assert response.status_code == 201, response.text
        body: dict[str, object] = response.json()
        return body


def signup(base_url: str) -> tuple[str, str]:
    """A tenant (enterprise plan, so limits stay out of the way) and its owner's admin key."""
    tenant = signup_at(base_url, "SDK", plan_tier="enterprise", headers=bearer(ADMIN_TOKEN))
    return tenant.key, tenant.id


@contextmanager
def live_server(workdir: Path, env: dict[str, str] | None = None) -> Iterator[LiveServer]:
    """Start a server (embedded unless ``env`` says otherwise) with a fresh tenant."""
    settings = {
        "AIGOS_SECRET_KEY": SECRET_KEY,
        "AIGOS_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIGOS_LOG_LEVEL": "warning",
        # Tests share one admin key per module: the default 60 requests a minute would throttle them.
        "AIGOS_DEFAULT_RATE_LIMIT_RPM": "100000",
        **(env or {}),
    }
    with ServerProcess(workdir, settings) as process:
        key, tenant = signup(process.base_url)
        yield LiveServer(process, key, tenant)
