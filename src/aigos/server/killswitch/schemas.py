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


class TriggerOut(BaseModel):
    """What a trigger issued: the root command and one command per affected agent."""

    command_id: uuid.UUID = Field(description="The root agent's command (the first one tenant-wide).")
    status: CommandStatus
    issued_at: datetime
    commands: list[CommandRef]
    skipped: list[Skipped] = Field(default_factory=list)


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
