"""``POST /v1/policies/check`` answered without the framework's routing: the product's hot path.

The route is declared with the others (``policy/api.py``), so it is documented, validated and reachable the
same way; this ASGI layer, the innermost of the app's middleware, only takes a check before FastAPI would
match it against every route, open a dependency scope and wrap the response again. Everything a request
meets on its way in (security headers, request id, admission, one ``Authorization`` header, the body limit)
it has already met; the edge validation and the problem answers are the very functions the route uses.
Measured with ``bench/policy.py``: the framework's part was most of a check's CPU.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from aigos.server.identity.agent_auth import admit, bearer_token, get_agent_authenticator
from aigos.server.policy.deps import get_checks
from aigos.server.policy.schemas import CheckIn
from aigos.server.routing import check_request
from aigos.server.telemetry import metrics

#: Where checks are asked.
CHECK_PATH = metrics.CHECK_ROUTE

_CHECK_IN: TypeAdapter[CheckIn] = TypeAdapter(CheckIn)


async def answer_check(request: Request, *, edge_checked: bool = False) -> Response:
    """The answer to one check request (a denial is an answer too), or the error it raises.

    ``edge_checked``: the body was already parsed and checked at the edge (``ValidatedRoute``), as it is when
    the route itself answers.
    """
    started = time.perf_counter()
    if not edge_checked:
        await check_request(request, untyped_is_json=True, any_type_is_json=True)
    authenticator = await get_agent_authenticator(request)
    agent = await admit(request, authenticator, bearer_token(request), "policies:check")
    try:
        body = _CHECK_IN.validate_python(await request.json())
    except ValidationError as exc:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]) from exc
    answer = await (await get_checks(request)).decide(agent, body, started)
    return Response(orjson.dumps(answer), media_type="application/json")


class CheckEndpoint:
    """Answers ``POST /v1/policies/check`` itself; passes every other request on to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CHECK_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        # Named as FastAPI names a matched route, for the access log's and the metrics' route template.
        scope["route"] = _ROUTE
        request = Request(scope, receive)
        try:
            response = await answer_check(request)
        except Exception as exc:
            handler = _handler_for(scope, exc)
            if handler is None:
                # Nothing of ours knows it: the server's error middleware answers 500 and logs it.
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


class _Route:
    """What ``scope["route"]`` says of a check: its path template."""

    path = CHECK_PATH


_ROUTE = _Route()


def _handler_for(scope: Scope, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    # The app's own problem handlers (``problems.install_problem_handlers``), looked up as Starlette's
    # exception middleware does: the nearest class in the exception's MRO that has one.
    handlers = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            handler: Callable[[Request, Exception], Awaitable[Response]] = handlers[cls]
            return handler
    return None
