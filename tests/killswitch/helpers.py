"""What the kill-switch suites share: a started server and a client for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from tests.helpers import TenantHandle, signup


@dataclass
class Live:
    """A started server and a client for it."""

    app: FastAPI
    http: httpx.AsyncClient

    async def tenant(self, name: str = "Acme") -> TenantHandle:
        """A new tenant (signup through the API)."""
        return await signup(self.http, name)

    async def agent(
        self, owner: TenantHandle, name: str, parent: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A registered agent (with `identity_token`)."""
        body: dict[str, Any] = {"name": name}
        if parent is not None:
            body["parent_id"] = parent["agent_id"]
        response = await self.http.post("/v1/agents/register", json=body, headers=owner.headers)
        assert response.status_code == 201, response.text
        agent: dict[str, Any] = response.json()
        return agent

    async def trigger(self, owner: TenantHandle, **body: Any) -> httpx.Response:
        """``POST /v1/kill-switch/trigger``."""
        body.setdefault("reason", "test")
        if "agent" in body:
            body["agent_id"] = body.pop("agent")["agent_id"]
        return await self.http.post("/v1/kill-switch/trigger", json=body, headers=owner.headers)
