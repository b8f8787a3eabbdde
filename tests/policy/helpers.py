"""What the policy suites share: policies created and decisions asked for through the public API, and the
checks of a refused limit."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient

from tests.helpers import TenantHandle
from tests.identity.helpers import assert_problem, bearer

CAPS = {"tools": ["web_*", "file_read"], "domains": ["*.company.com"], "max_budget": 10.0}


async def create_policy(client: AsyncClient, tenant: TenantHandle, **spec: Any) -> dict[str, Any]:
    """``POST /v1/policies``; asserts 201."""
    response = await client.post("/v1/policies", json={"name": "p", **spec}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def check(
    client: AsyncClient, token: str, action: str = "read", resource: str = "doc", **context: Any
) -> Any:
    """``POST /v1/policies/check``; asserts 200 and returns the decision."""
    body = {"action": action, "resource": resource, "context": context}
    response = await client.post("/v1/policies/check", json=body, headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


def rules(count: int, **extra: Any) -> list[dict[str, Any]]:
    """``count`` distinct deny rules."""
    return [{"effect": "deny", "actions": [f"action_{n}"], **extra} for n in range(count)]


def assert_limit(response: Any, status: int, limit: str, maximum: int) -> None:
    """A ``POLICY_LIMIT_EXCEEDED`` problem naming ``limit`` and its ``max``."""
    body = assert_problem(response, status, "POLICY_LIMIT_EXCEEDED")
    assert (body["limit"], body["max"], body["plan"]) == (limit, maximum, "free"), body
