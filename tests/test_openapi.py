"""The OpenAPI document says what the API sends on errors: problems, and RFC 6749 errors on OAuth."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

OAUTH_ENDPOINTS = ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"]


def documented(spec: dict[str, Any], path: str, status: int) -> dict[str, Any]:
    """The content a POST on ``path`` documents for ``status`` (``default`` when the status is not listed)."""
    responses = spec["paths"][path]["post"]["responses"]
    content: dict[str, Any] = responses.get(str(status), responses["default"])["content"]
    return content


@pytest.mark.parametrize("path", OAUTH_ENDPOINTS)
@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({}, {}),  # no client authentication: 401 invalid_client, or 400 invalid_request on token
        ({"grant_type": "client_credentials", "token": "x"}, {"Authorization": "Basic bm9ib2R5Om5vcGU="}),
    ],
)
async def test_oauth_errors_are_documented_as_rfc6749_json(
    client: AsyncClient, app: FastAPI, path: str, body: dict[str, str], headers: dict[str, str]
) -> None:
    response = await client.post(path, data=body, headers=headers)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/json"
    assert "error" in response.json()
    content = documented(app.openapi(), path, response.status_code)
    assert list(content) == ["application/json"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/OAuthError"}
    assert set(app.openapi()["components"]["schemas"]["OAuthError"]["required"]) <= set(response.json())


async def test_other_errors_stay_problem_documents(client: AsyncClient, app: FastAPI) -> None:
    response = await client.post("/v1/agents/register", json={})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    responses = app.openapi()["paths"]["/v1/agents/register"]["post"]["responses"]
    content = responses.get("401", responses["default"])["content"]
    assert list(content) == ["application/problem+json"]
