"""The OpenAPI document: FastAPI's, corrected to say what the API really answers on errors.

Errors are RFC 9457 problem documents, except where a route declares its own error shape: the OAuth 2.0
endpoints answer in the RFC 6749 form (``application/json``), declared with :func:`oauth_errors`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from aigos import __version__

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details, with the AIGOS error `code` and the `request_id`.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "Stable machine-readable error code."},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "For VALIDATION_FAILED: each offending field, as a JSON pointer.",
            "items": {
                "type": "object",
                "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
            },
        },
    },
}
OAUTH_ERROR_SCHEMA: dict[str, Any] = {
    "title": "OAuthError",
    "type": "object",
    "description": "An OAuth 2.0 error response (RFC 6749 section 5.2).",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "The RFC 6749 error code, e.g. `invalid_client`."},
        "error_description": {"type": "string"},
        "error_uri": {"type": "string"},
    },
}
_OAUTH_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_CONTENT = {"application/problem+json": {"schema": _PROBLEM_REF}}
_DEFAULT_ERROR = {"description": "Error (RFC 9457 problem details)", "content": _PROBLEM_CONTENT}


def oauth_errors(*statuses: int) -> dict[str, dict[str, Any]]:
    """An operation's ``responses`` for the statuses it answers in the RFC 6749 form, not as problems.

    Once an operation declares one, every other 4xx it declares is taken to be in that form too.
    """
    return {
        str(status): {"description": "OAuth 2.0 error (RFC 6749)", "content": _OAUTH_ERROR_CONTENT}
        for status in statuses
    }


def _answers_oauth_errors(responses: dict[str, Any]) -> bool:
    return any(response.get("content") == _OAUTH_ERROR_CONTENT for response in responses.values())


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """Generate the spec once per app: every operation's errors are problem documents, or OAuth errors.

    FastAPI announces 422 with its own validation shape; this API answers 400 ``VALIDATION_FAILED``
    problems instead, so the spec is rewritten to say so. What no operation declares (a 413 from the
    body limit, a 5xx) is a problem document everywhere: ``default``.
    """
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title="AIGOS",
        version=__version__,
        summary="Identity and governance control plane for AI agents.",
        routes=app.routes,
    )
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["Problem"] = PROBLEM_SCHEMA
    uses_oauth_errors = False
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            oauth = _answers_oauth_errors(responses)
            uses_oauth_errors |= oauth
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400",
                    {"description": "Malformed JSON or validation failure", "content": _PROBLEM_CONTENT},
                )
            for status, response in responses.items():
                if status.startswith("4") and oauth:
                    response["content"] = _OAUTH_ERROR_CONTENT
                elif status.startswith(("4", "5")):
                    response["content"] = _PROBLEM_CONTENT
            responses.setdefault("default", _DEFAULT_ERROR)
    if uses_oauth_errors:
        components["OAuthError"] = OAUTH_ERROR_SCHEMA
    app.openapi_schema = spec
    return spec
