"""The edge every route stands behind: what a request carries is refused before FastAPI reads it if the
two backends would not store it alike (see ``aigos.core.storable``).

``ValidatedRoute`` is the ``route_class`` of every router. Before the endpoint's parameters are resolved
it checks the path parameters, the query string, and the body: a JSON body is parsed once, strictly, and
the parsed value is left on the request (Starlette's ``Request.json`` cache), so neither FastAPI nor an
endpoint reading ``await request.json()`` parses it again; a form body's keys and values are checked
(Starlette caches the parsed form too). A refusal is the usual ``VALIDATION_FAILED`` problem naming the
field, rendered by the same handler as any schema error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic_core import from_json
from starlette.requests import Request
from starlette.responses import Response

from aigos.core.storable import find_unstorable, text_problem
from aigos.server.errors import OAuthError

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _refused(loc: tuple[str | int, ...], detail: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": detail, "input": None}])


def _malformed() -> RequestValidationError:
    # The problem handler answers MALFORMED_JSON for this error type, as for FastAPI's own parse errors.
    return RequestValidationError(
        [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}}]
    )


def _check_texts(where: str, pairs: Iterable[tuple[str, Any]]) -> None:
    for name, value in pairs:
        if (problem := text_problem(name)) is not None:
            raise _refused((where, name), f"the name {problem}")
        if isinstance(value, str) and (problem := text_problem(value)) is not None:
            raise _refused((where, name), problem)


def _media_type(request: Request) -> str | None:
    header = request.headers.get("content-type")
    # Parameters (charset, boundary) do not change how the body is read here.
    return header.split(";", 1)[0].strip().lower() if header else None


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def parse_json(body: bytes, *, walk: bool = True) -> Any:
    """``body`` as JSON, every part of it storable; ``RequestValidationError`` naming the first part that is
    not (``MALFORMED_JSON`` when it does not parse at all: bad syntax, bad UTF-8, an integer too long).
    ``walk=False`` leaves finding unstorable parts to the caller."""
    try:
        # pydantic's reader (as FastAPI's own validate_json would use): strict, refuses NaN and Infinity,
        # lone surrogates and deep nesting outright, and is four times faster than the standard library's.
        value = from_json(body, allow_inf_nan=False)
    except ValueError:
        value = _parse_to_name_the_field(body)
    if not walk:
        return value
    found = find_unstorable(value)
    if found is not None:
        raise _refused(("body", *found.path), found.reason)
    return value


def _parse_to_name_the_field(body: bytes) -> Any:
    # A refused body, read again by the lenient standard reader: what it takes (NaN, a lone surrogate, a
    # depth past pydantic's) the walk then refuses naming the field; what it refuses is malformed.
    try:
        return json.loads(body)
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, and int() refusing more than 4300 digits.
        raise _malformed() from exc
    except RecursionError as exc:
        # The C scanner recurses once per level: a body nested thousands deep never reaches the walk.
        raise _refused(("body",), "is nested too deeply") from exc


class ValidatedRoute(APIRoute):
    """An ``APIRoute`` whose requests are checked at the edge before FastAPI parses them."""

    #: Whether the edge walks the whole JSON body for unstorable parts (see ``ItemizedRoute``).
    walks_body = True
    #: Whether the edge reads the body at all (see ``RawBodyRoute``).
    reads_body = True

    def get_route_handler(self) -> Handler:
        """FastAPI's handler, behind the edge check."""
        handler = super().get_route_handler()
        # A route that documents its body by hand reads it itself (``await request.json()``), whatever the
        # Content-Type; without one, FastAPI reads a declared body as JSON.
        reads_itself = "requestBody" in (self.openapi_extra or {})
        untyped_is_json = reads_itself or self.body_field is not None

        async def checked(request: Request) -> Response:
            try:
                await check_request(
                    request,
                    untyped_is_json=untyped_is_json,
                    any_type_is_json=reads_itself,
                    walk=self.walks_body,
                    body=self.reads_body,
                )
            except RequestValidationError as refusal:
                return self.refuse(refusal)
            return await handler(request)

        return checked

    def refuse(self, refusal: RequestValidationError) -> Response:
        """The answer to a request refused at the edge: the problem handler's ``VALIDATION_FAILED``."""
        raise refusal


class ItemizedRoute(ValidatedRoute):
    """The edge of a batch route whose items are judged one by one: the body must parse as JSON, but what
    each item holds is left to the endpoint, which walks every item itself (``find_unstorable``) so that
    one bad item is refused alone. Such an endpoint must store nothing of the body it has not walked."""

    walks_body = False


class RawBodyRoute(ValidatedRoute):
    """The edge of a route whose body is not always JSON (an asset card may come as YAML): the path and
    query are checked here; the endpoint parses the body itself and must hold what it parsed to the same
    rules (``parse_json`` for JSON; ``find_unstorable`` on whatever else it parsed)."""

    reads_body = False


class OAuthRoute(ValidatedRoute):
    """The edge of the OAuth 2.0 endpoints, which answer in the RFC 6749 form, not as problems."""

    def refuse(self, refusal: RequestValidationError) -> Response:
        """400 ``invalid_request`` naming the parameter (RFC 6749 section 5.2)."""
        first = refusal.errors()[0]
        name = ":".join(str(part) for part in first["loc"])
        raise OAuthError("invalid_request", f"{name}: {first['msg']}")


async def check_request(
    request: Request,
    *,
    untyped_is_json: bool,
    any_type_is_json: bool = False,
    walk: bool = True,
    body: bool = True,
) -> None:
    """Refuse ``request`` if a path or query parameter or its body holds something unstorable (its body
    parsed but not walked if ``walk`` is false).

    A JSON body is parsed here, once, and left in ``request``'s cache for FastAPI and the endpoint.
    """
    _check_texts("path", request.path_params.items())
    if request.scope.get("query_string"):
        _check_texts("query", request.query_params.multi_items())
    if not body:
        return
    media_type = _media_type(request)
    if media_type in _FORM_TYPES:
        form = await request.form()
        _check_texts("body", form.multi_items())
        return
    if (
        any_type_is_json
        or (media_type is None and untyped_is_json)
        or (media_type is not None and _is_json(media_type))
    ):
        raw = await request.body()
        if raw:
            request._json = parse_json(raw, walk=walk)
        elif any_type_is_json:
            # Such a route reads ``request.json()`` without asking FastAPI, which would answer this itself.
            raise _malformed()
