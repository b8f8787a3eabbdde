"""FastAPI dependencies of the platform context (``async`` for the reason given in ``server/deps.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request


async def get_features(request: Request) -> list[str]:
    """The features this server enables (``/v1/info``)."""
    features: list[str] = request.app.state.runtime.features
    return features


FeaturesDep = Annotated[list[str], Depends(get_features)]
