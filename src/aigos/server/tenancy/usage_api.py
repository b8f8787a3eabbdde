"""Routes of the tenancy context: usage."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["tenancy"])
