"""API shapes every context's routes share."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list (the seed's pagination shape)."""

    data: list[T]
    page: int
    limit: int
    total: int
