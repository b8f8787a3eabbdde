"""Kill-switch fixtures: a real HTTP server in the test's event loop, so streams are read as they are sent.

(httpx's in-process ASGI transport buffers a response until it ends, which a stream never does.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from aigos.server.config import Settings
from tests.server_process import free_port
from tests.tenancy.conftest import TenantHandle, signup, tenant_a, tenant_b

__all__ = ["tenant_a", "tenant_b"]


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


@pytest.fixture
async def live(app: FastAPI, settings: Settings) -> AsyncIterator[Live]:
    """The test's app served by uvicorn on a free loopback port."""
    # Short keep-alives so a test sees one (the app reads its settings object when it starts).
    settings.killswitch_keepalive_seconds = 0.3
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as http:
        try:
            yield Live(app, http)
        finally:
            # Open streams would hold the shutdown: end them as a SIGTERM would.
            app.state.runtime.killswitch.begin_close()
            server.should_exit = True
            await asyncio.wait_for(task, 15)
