"""API shapes of the platform context."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Liveness(BaseModel):
    """The process is up and serving requests."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """The replica can serve: every dependency answered, or only the bus is down (``degraded``)."""

    status: Literal["ready", "degraded"] = Field(
        "ready",
        description="`degraded`: the bus (Redis) is down; the admin API and the kill switch still work, "
        "agents' policy checks are refused with 503 until it is back.",
    )
    checks: dict[str, Literal["up", "down", "full", "stalled"]] = Field(
        description="Each dependency (`database`, `bus`) and whether it answered (`full`: the database's "
        "storage refuses writes); `eventlog`: whether the event log's batch writer is appending "
        "(`stalled` when it has not for a few seconds)."
    )


class Backends(BaseModel):
    """Which storage and bus implementations this server runs on."""

    database: Literal["sqlite", "postgresql"]
    bus: Literal["memory", "redis"]
    embedded: bool = Field(description="True when state lives in this process, so only one may run.")


class Info(BaseModel):
    """What this server is."""

    name: Literal["aigos"] = "aigos"
    version: str
    backends: Backends
    features: list[str] = Field(description="Capabilities this server has enabled.")
