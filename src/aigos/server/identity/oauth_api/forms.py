"""What every OAuth 2.0 endpoint that takes a request body shares: the form it reads, and how the
OpenAPI document describes it."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from aigos.server.errors import OAuthError
from aigos.server.openapi import oauth_errors

FORM = "application/x-www-form-urlencoded"

#: The ``openapi_extra`` of an endpoint reading a form: any text parameters; errors in the RFC 6749 form.
FORM_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {FORM: {"schema": {"type": "object", "additionalProperties": {"type": "string"}}}},
    },
    "responses": oauth_errors(400, 401, 429),
}


async def read_form(request: Request) -> dict[str, str]:
    """The form body; RFC 6749 allows nothing else, and each parameter at most once."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
        raise OAuthError("invalid_request", f"The body must be {FORM}.")
    try:
        form = await request.form()
    except Exception as exc:
        raise OAuthError("invalid_request", "The form body could not be parsed.") from exc
    values: dict[str, str] = {}
    for key, value in form.multi_items():
        if key in values:
            raise OAuthError("invalid_request", f"Parameter {key!r} is repeated.")
        if not isinstance(value, str):
            raise OAuthError("invalid_request", f"Parameter {key!r} must be text.")
        values[key] = value
    return values
