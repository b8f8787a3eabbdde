"""Routes of the tenancy context: members."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["tenancy"])
