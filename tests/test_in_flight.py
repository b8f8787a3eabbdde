"""Requests in flight: counted from arrival to the start of their response; background work waits on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from aigos.server.in_flight import InFlight
from aigos.server.middleware.request_context import RequestContextMiddleware


async def test_quiet_returns_at_once_when_no_request_is_in_flight() -> None:
    in_flight = InFlight()
    started = time.monotonic()
    await in_flight.quiet(5.0)
    assert time.monotonic() - started < 1.0


async def test_quiet_waits_for_the_last_request_to_leave() -> None:
    in_flight = InFlight()
    in_flight.enter()
    in_flight.enter()
    waiting = asyncio.create_task(in_flight.quiet(5.0))
    await asyncio.sleep(0.01)
    in_flight.leave()
    await asyncio.sleep(0.01)
    assert not waiting.done()
    in_flight.leave()
    await asyncio.wait_for(waiting, 1.0)
    assert in_flight.count == 0


async def test_quiet_gives_up_after_its_limit_and_forgets_the_waiter() -> None:
    in_flight = InFlight()
    in_flight.enter()
    started = time.monotonic()
    await in_flight.quiet(0.02)
    assert 0.015 <= time.monotonic() - started < 1.0
    # A waiter that gave up is not kept around (the count may never reach zero under load).
    assert in_flight._waiters == []
    in_flight.leave()


def _app(in_flight: InFlight, seen: list[int]) -> RequestContextMiddleware:
    async def plain(_request: Request) -> PlainTextResponse:
        seen.append(in_flight.count)
        return PlainTextResponse("ok")

    async def stream(_request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            # The response has started: a stream that stays open no longer counts.
            seen.append(in_flight.count)
            yield b"second"

        return StreamingResponse(chunks())

    async def broken(_request: Request) -> PlainTextResponse:
        seen.append(in_flight.count)
        raise RuntimeError("boom")

    routes = [Route("/plain", plain), Route("/stream", stream), Route("/broken", broken)]
    return RequestContextMiddleware(Starlette(routes=routes), in_flight=in_flight)


@pytest.mark.parametrize(
    ("path", "status", "during"), [("/plain", 200, 1), ("/stream", 200, 0), ("/broken", 500, 1)]
)
async def test_a_request_counts_until_its_response_starts(path: str, status: int, during: int) -> None:
    in_flight, seen = InFlight(), []
    transport = httpx.ASGITransport(app=_app(in_flight, seen), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(path)
    assert response.status_code == status
    assert seen == [during]
    assert in_flight.count == 0
