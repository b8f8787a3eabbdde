"""API shapes of the kill switch (seed 000 E5)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from aigos.server.inputs import Input

CommandName = Literal["TERMINATE", "PAUSE", "RESUME"]
CommandStatus = Literal["pending", "delivered", "acknowledged"]
AckOutcome = Literal["terminated", "paused", "resumed", "failed", "rejected"]


class TriggerIn(Input):
    """Press the button: one agent (and, with ``cascade``, its descendants) or every agent of the tenant."""

    agent_id: uuid.UUID | None = Field(None, description="The agent to stop; omit with `all_agents`.")
    all_agents: bool = Field(False, description="Every agent of the tenant (tenant-wide).")
    reason: str = Field(..., min_length=1, max_length=2000, description="Why; shown to the agent.")
    cascade: bool = Field(True, description="Also every descendant in the agent's lineage.")
    command: CommandName = Field("TERMINATE", description="TERMINATE, PAUSE or RESUME.")

    @model_validator(mode="after")
    def _one_target(self) -> TriggerIn:
        if (self.agent_id is None) == (not self.all_agents):
            raise ValueError("give either agent_id or all_agents=true")
        return self


class CommandRef(BaseModel):
    """One command of a trigger."""

    command_id: uuid.UUID
    agent_id: uuid.UUID
    status: CommandStatus


class Skipped(BaseModel):
    """An agent of a cascade or tenant-wide trigger that got no command, and why."""

    agent_id: uuid.UUID
    reason: str


class FleetScope(BaseModel):
    """Whom a fleet command is for: every agent of the tenant, or a root agent and its descendants."""

    kind: Literal["tenant", "lineage"]
    root_agent_id: uuid.UUID | None = None


class TriggerOut(BaseModel):
    """What a trigger issued: one command for a single agent, or one fleet command for a scope."""

    command_id: uuid.UUID = Field(description="The agent's command, or the fleet command.")
    status: CommandStatus
    issued_at: datetime
    commands: list[CommandRef] = Field(
        description="The single agent's command; empty for a fleet command (its agents are reached in the "
        "background: see `GET /v1/kill-switch/fleet-commands/{command_id}`)."
    )
    skipped: list[Skipped] = Field(default_factory=list)
    fleet: bool = Field(False, description="A fleet command: one signed command for the whole scope.")
    scope: FleetScope | None = None
    sequence: int | None = Field(None, description="The fleet command's sequence in the tenant.")


class FleetCommandOut(BaseModel):
    """A fleet command, its halt, its bookkeeping, and how many agents received and acknowledged it."""

    command_id: uuid.UUID
    tenant_id: uuid.UUID
    scope: FleetScope
    command: CommandName
    reason: str
    sequence: int
    issued_at: datetime
    expires_at: datetime
    issued_by: str | None
    key_id: str
    active: bool = Field(description="A PAUSE or TERMINATE halt still in force.")
    lifted_by: uuid.UUID | None = Field(description="The RESUME that lifted the halt.")
    bookkeeping_done_at: datetime | None = Field(
        description="When every covered agent's status was set and its delivery record written."
    )
    targeted: int | None = Field(description="Agents the bookkeeping reached (None until it is done).")
    skipped: int | None = Field(
        description="Agents that could not take the status (a RESUME of a terminated)."
    )
    pending: int = Field(description="Agents with a record that were not delivered the command yet.")
    delivered: int = Field(description="Agents delivered the command that have not acknowledged it.")
    acknowledged: int = Field(description="Agents that acknowledged the command.")


class FleetCommandPage(BaseModel):
    """One page of fleet commands, newest first."""

    commands: list[FleetCommandOut]
    total: int
    page: int
    limit: int


class CommandOut(BaseModel):
    """A command with its delivery and acknowledgement."""

    command_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: uuid.UUID
    root_command_id: uuid.UUID
    command: CommandName
    reason: str
    cascade: bool
    sequence: int
    status: CommandStatus
    issued_at: datetime
    expires_at: datetime
    delivered_at: datetime | None
    acknowledged_at: datetime | None
    ack_outcome: AckOutcome | None
    ack_detail: str | None
    issued_by: str | None
    key_id: str
    fleet: bool = Field(False, description="One agent's delivery of a fleet command.")


class CommandPage(BaseModel):
    """One page of commands, newest first."""

    commands: list[CommandOut]
    total: int
    page: int
    limit: int


class AckIn(Input):
    """The agent's acknowledgement of a command."""

    outcome: AckOutcome
    detail: str | None = Field(None, max_length=2000)


class PublicKey(BaseModel):
    """A key that signs kill-switch commands."""

    key_id: str
    alg: Literal["Ed25519"] = "Ed25519"
    public_key: str = Field(description="The raw 32-byte public key, base64url.")


class PublicKeys(BaseModel):
    """The published kill-switch keys."""

    keys: list[PublicKey]
