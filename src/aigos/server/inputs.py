"""The base of every model the API reads: numbers both databases store alike.

JSON itself cannot carry ``NaN`` or ``Infinity`` past the edge (``aigos.server.routing``), but pydantic's
lax mode turns the strings ``"inf"`` and ``"nan"`` into such floats, and services build models from other
sources (an OASF record's annotations); ``allow_inf_nan=False`` refuses them in every float field at once.
Integer fields that reach an ``INTEGER`` column are bounded by ``ColumnInt`` (or tighter), so PostgreSQL
never overflows where SQLite would store.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: What a PostgreSQL ``INTEGER`` column holds (SQLite's are 64-bit: the smaller bound is the shared one).
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

ColumnInt = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]


class Input(BaseModel):
    """A request body (or part of one): non-finite floats are refused wherever they come from."""

    model_config = ConfigDict(allow_inf_nan=False)
