"""The floor: a bare ASGI app served exactly as ``aigos serve`` serves AIGOS, to read every figure against.

The app (``create_app``) is Starlette with nothing in front of it: a POST to any path reads its body and
answers a constant small JSON object; ``GET /health`` answers ``{"status": "ok"}`` (the launcher's
readiness probe). No authentication, no parsing of the body, no middleware: what a request costs here is
what the stack costs -- uvicorn, the HTTP protocol class, the event loop, the worker processes.

The launcher (``python -m bench.floor serve --host H --port P --workers N``) is ``aigos serve`` itself
with only the application swapped: the same settings checks, uvicorn options, protocol class with its
read deadlines (``aigos.server.http_protocol``), ``SO_REUSEPORT`` socket per worker and supervisor. So
whatever changes in how AIGOS is served changes the floor too. It reads the same ``AIGOS_*`` environment
as the server it stands beside (a PostgreSQL + Redis environment is needed for more than one worker, as
for AIGOS; nothing is written to the database, which the migrations already left up to date).

``bench._server.floor_server`` starts it; the benches time it with the same client, requests and
concurrency as the AIGOS phase it stands for.
"""

from __future__ import annotations

import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

#: The floor's answer to a POST: a small constant JSON object, about the size of a check decision.
BODY = (
    b'{"allowed":true,"decision":"allow","code":null,"reason":"floor","policy_id":null,'
    b'"rule_id":null,"request_id":"00000000000000000000000000000000"}'
)
HEALTH = b'{"status":"ok"}'

#: The application ``aigos serve`` runs instead of AIGOS's when started through this module.
APP = f"{__name__}:create_app"


async def _answer(request: Request) -> Response:
    # The body is read (receiving it is the stack's work) but not parsed (that would be the app's).
    await request.body()
    return Response(BODY, media_type="application/json")


async def _health(_request: Request) -> Response:
    return Response(HEALTH, media_type="application/json")


def create_app() -> Starlette:
    """The floor application (an ASGI factory, as ``aigos.server.app:create_app`` is)."""
    return Starlette(
        routes=[
            Route("/health", _health, methods=["GET"]),
            Route("/{path:path}", _answer, methods=["POST"]),
        ]
    )


def main(argv: list[str]) -> None:
    """``aigos`` with ``serve`` running ``create_app`` instead of the AIGOS application."""
    from aigos.cli import serve

    # ``serve`` reads its module's ``APP`` when it starts uvicorn; fail loudly if that hook ever moves,
    # rather than silently timing AIGOS as its own floor.
    if not isinstance(getattr(serve, "APP", None), str):
        raise SystemExit("aigos.cli.serve.APP is gone: bench/floor.py cannot swap the application")
    serve.APP = APP
    serve.serve.main(argv, prog_name="floor")


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit("usage: python -m bench.floor serve [aigos serve options]")
    main(sys.argv[2:])
