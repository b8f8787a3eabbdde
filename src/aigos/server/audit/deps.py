"""FastAPI dependencies of the audit context (``async`` for the reason given in ``server/deps.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from aigos.core.signing import Signer


async def get_checkpoint_signer(request: Request) -> Signer:
    """The key that signs the logs' checkpoints (the event log's)."""
    signer: Signer = request.app.state.runtime.events.signer
    return signer


CheckpointSignerDep = Annotated[Signer, Depends(get_checkpoint_signer)]
