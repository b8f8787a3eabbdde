"""A test's app served by a real uvicorn in the test's event loop, for what only a socket shows (streams)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from aigos.server.http_protocol import protocol_path
from tests.killswitch.helpers import Live
from tests.server_process import free_port


@contextlib.asynccontextmanager
async def serving(app: FastAPI, http: Any = None) -> AsyncIterator[Live]:
    """``app`` served by uvicorn on a free loopback port (with the HTTP protocol ``http``; by default the
    one ``aigos serve`` runs), for streams: httpx's in-process ASGI transport buffers a response until it
    ends, which a stream never does."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", http=http or protocol_path()
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
        try:
            yield Live(app, client)
        finally:
            # Open streams would hold the shutdown: end them as a SIGTERM would.
            app.state.runtime.shutdown.close()
            server.should_exit = True
            await asyncio.wait_for(task, 15)
