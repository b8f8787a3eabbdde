"""FastAPI dependency for what the kill switch owns: the replica's hub of open streams."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from aigos.server.killswitch.hub import Hub


async def get_hub(request: Request) -> Hub:
    """The replica's kill-switch hub (``async``: see ``aigos.server.deps.get_runtime``)."""
    hub: Hub = request.app.state.runtime.killswitch
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]
