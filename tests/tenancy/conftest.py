"""Tenancy fixtures: tenants created through the public API, as a user would."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from httpx import AsyncClient


@dataclass
class TenantHandle:
    """A tenant created by signup, with its owner key."""

    id: str
    slug: str
    key: str
    key_id: str
    owner_email: str
    owner_id: str
    body: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        """Authorization with the owner's admin key."""
        return {"Authorization": f"Bearer {self.key}"}


async def signup(client: AsyncClient, name: str = "Acme", **extra: Any) -> TenantHandle:
    """Create a tenant through ``POST /v1/tenants``."""
    headers = extra.pop("headers", None) or {}
    slug = extra.pop("slug", f"{name.lower()}-{uuid.uuid4().hex[:8]}")
    email = extra.pop("owner_email", f"owner-{uuid.uuid4().hex[:8]}@example.com")
    response = await client.post(
        "/v1/tenants",
        json={
            "name": name,
            "slug": slug,
            "owner_email": email,
            "owner_password": "correct horse battery",
            **extra,
        },
        headers=headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return TenantHandle(
        id=body["tenant"]["id"],
        slug=slug,
        key=body["api_key"]["key"],
        key_id=body["api_key"]["id"],
        owner_email=email,
        owner_id=body["owner"]["user_id"],
        body=body,
    )


@pytest.fixture
async def tenant_a(client: AsyncClient) -> TenantHandle:
    """One tenant."""
    return await signup(client, "Alpha")


@pytest.fixture
async def tenant_b(client: AsyncClient) -> TenantHandle:
    """Another tenant."""
    return await signup(client, "Beta")
