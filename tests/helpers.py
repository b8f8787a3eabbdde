"""Helpers the suites share: tenants signed up through the public API, as a user would, in process or on a
running server."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from httpx import AsyncClient


def bearer(token: str) -> dict[str, str]:
    """Authorization with ``token``."""
    return {"Authorization": f"Bearer {token}"}


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


def _signup_form(name: str, extra: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The headers and body of a signup: ``name`` and a unique slug and owner unless ``extra`` names them."""
    headers = extra.pop("headers", None) or {}
    slug = extra.pop("slug", f"{name.lower()}-{uuid.uuid4().hex[:8]}")
    email = extra.pop("owner_email", f"owner-{uuid.uuid4().hex[:8]}@example.com")
    body = {
        "name": name,
        "slug": slug,
        "owner_email": email,
        "owner_password": "correct horse battery",
        **extra,
    }
    return headers, body


def _handle(response: httpx.Response, form: dict[str, Any]) -> TenantHandle:
    assert response.status_code == 201, response.text
    body = response.json()
    return TenantHandle(
        id=body["tenant"]["id"],
        slug=form["slug"],
        key=body["api_key"]["key"],
        key_id=body["api_key"]["id"],
        owner_email=form["owner_email"],
        owner_id=body["owner"]["user_id"],
        body=body,
    )


async def signup(client: AsyncClient, name: str = "Acme", **extra: Any) -> TenantHandle:
    """Create a tenant through ``POST /v1/tenants`` (``headers``, ``slug``, ``owner_email`` and any other
    field of the signup may be given)."""
    headers, form = _signup_form(name, extra)
    return _handle(await client.post("/v1/tenants", json=form, headers=headers), form)


def signup_at(base_url: str, name: str = "Acme", **extra: Any) -> TenantHandle:
    """:func:`signup` on the server at ``base_url``, from synchronous code."""
    headers, form = _signup_form(name, extra)
    return _handle(httpx.post(base_url + "/v1/tenants", json=form, headers=headers, timeout=30), form)


def prometheus_samples(text: str) -> dict[str, float]:
    """A Prometheus text exposition's samples, by name with labels."""
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    }
