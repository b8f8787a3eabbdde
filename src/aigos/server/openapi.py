"""The OpenAPI document: FastAPI's, corrected to say what the API really answers on errors."""

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
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_CONTENT = {"application/problem+json": {"schema": _PROBLEM_REF}}
_DEFAULT_ERROR = {"description": "Error (RFC 9457 problem details)", "content": _PROBLEM_CONTENT}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """Generate the spec once per app: every operation's errors are problem documents.

    FastAPI announces 422 with its own validation shape; this API answers 400 ``VALIDATION_FAILED``
    problems instead, so the spec is rewritten to say so.
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
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400",
                    {"description": "Malformed JSON or validation failure", "content": _PROBLEM_CONTENT},
                )
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    response["content"] = _PROBLEM_CONTENT
            responses.setdefault("default", _DEFAULT_ERROR)
    app.openapi_schema = spec
    return spec
