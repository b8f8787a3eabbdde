"""Kill-switch fixtures: a real HTTP server in the test's event loop, so streams are read as they are sent.

(httpx's in-process ASGI transport buffers a response until it ends, which a stream never does.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from aigos.server.config import Settings
from aigos.server.http_protocol import protocol_path
from tests.killswitch.helpers import Live
from tests.server_process import free_port


@pytest.fixture
async def live(app: FastAPI, settings: Settings) -> AsyncIterator[Live]:
    """The test's app served by uvicorn on a free loopback port."""
    # Short keep-alives so a test sees one (the app reads its settings object when it starts).
    settings.killswitch_keepalive_seconds = 0.3
    port = free_port()
    # The protocol ``aigos serve`` runs (streams hand their connection over to the hub).
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", http=protocol_path()
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as http:
        try:
            yield Live(app, http)
        finally:
            # Open streams would hold the shutdown: end them as a SIGTERM would.
            app.state.runtime.killswitch.begin_close()
            server.should_exit = True
            await asyncio.wait_for(task, 15)
