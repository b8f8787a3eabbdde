"""The base of every model the API reads: numbers both databases store alike.

JSON itself cannot carry ``NaN`` or ``Infinity`` past the edge (``aigos.server.routing``), but pydantic's
lax mode turns the strings ``"inf"`` and ``"nan"`` into such floats, and services build models from other
sources (an OASF record's annotations); ``allow_inf_nan=False`` refuses them in every float field at once.
Every integer field that reaches an ``INTEGER`` column is bounded within ``INT32_MIN..INT32_MAX`` by its own
``Field(ge=..., le=...)`` (all are tighter today), so PostgreSQL never overflows where SQLite would store;
integers inside free-form JSON are held to 64 bits at the edge.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: What a PostgreSQL ``INTEGER`` column holds (SQLite's are 64-bit: the smaller bound is the shared one).
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


class Input(BaseModel):
    """A request body (or part of one): non-finite floats are refused wherever they come from."""

    model_config = ConfigDict(allow_inf_nan=False)
