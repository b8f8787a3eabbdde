"""API shapes of the identity context."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aigos.core import globs
from aigos.core.agents import AgentStatus, is_semver
from aigos.core.canonical import canonical
from aigos.server.inputs import Input
from aigos.server.tenancy.schemas import normalise_email

DeploymentEnv = Literal["development", "staging", "production"]
Liveness = Literal["online", "stale", "offline"]
# A tool pattern: a name with optional glob characters.
_TOOL = re.compile(r"^[A-Za-z0-9_.:/*?\-]{1,100}$")
# A domain pattern: a host name, optionally starting with `*.`, or `*` alone.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(\*|(\*\.)?{_LABEL}(\.{_LABEL})*)$")
MAX_METADATA_BYTES = 16_384


class CapabilitiesIn(Input):
    """What the agent may use (seed E3): tool and domain patterns and a budget ceiling."""

    model_config = ConfigDict(extra="forbid")

    tools: list[str] = Field(
        default_factory=list, max_length=200, description="Tool names or globs (`web_*`)."
    )
    domains: list[str] = Field(
        default_factory=list, max_length=200, description="Host names or globs (`*.company.com`)."
    )
    max_budget: float | None = Field(None, ge=0, description="Spending ceiling in the tenant's currency.")

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[str]) -> list[str]:
        bad = [tool for tool in value if not _TOOL.match(tool)]
        if bad:
            raise ValueError(f"invalid tool patterns: {', '.join(map(repr, bad))}")
        # And the bounds of every name glob (the number of stars): a check meets these patterns too.
        for tool in value:
            problem = globs.name_glob_error(tool)
            if problem:
                raise ValueError(f"tool pattern {tool!r} {problem}")
        return value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        lowered = [domain.strip().lower() for domain in value]
        bad = [domain for domain in lowered if not _DOMAIN.match(domain)]
        if bad:
            raise ValueError(f"invalid domain patterns: {', '.join(map(repr, bad))}")
        return lowered


class GoldenThreadIn(Input):
    """The AIGRC Golden Thread; with `approved_by` and `approved_at` the server verifies `hash`."""

    model_config = ConfigDict(extra="forbid")

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    ticket_id: str = Field(min_length=1, max_length=100)
    approved_by: str | None = Field(None, max_length=320)
    approved_at: str | None = Field(
        None, max_length=40, description="ISO-8601 UTC, e.g. 2025-01-15T10:30:00Z."
    )


def _metadata_size(value: dict[str, Any]) -> dict[str, Any]:
    if len(canonical(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata exceeds {MAX_METADATA_BYTES} bytes")
    return value


class AgentIn(Input):
    """Register an agent (admin plane, or self-registration with an API key)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    email: str | None = Field(None, max_length=320, description="Unique within the tenant when given.")
    description: str | None = Field(None, max_length=2_000)
    agent_type: str = Field("generic", min_length=1, max_length=50, pattern=r"^[a-z0-9_\-]+$")
    version: str = Field("1.0.0", max_length=64, description="Semantic version.")
    owner: str | None = Field(None, max_length=255)
    deployment_env: DeploymentEnv = "development"
    capabilities: CapabilitiesIn = Field(default_factory=CapabilitiesIn)
    asset_card_id: str | None = Field(None, max_length=100, description="AIGRC asset card id.")
    golden_thread: GoldenThreadIn | None = None
    parent_id: uuid.UUID | None = Field(None, description="The agent that spawned this one.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    _email = field_validator("email")(lambda cls, v: normalise_email(v) if v is not None else None)
    _metadata = field_validator("metadata")(lambda cls, v: _metadata_size(v))

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not is_semver(value):
            raise ValueError("not a semantic version (MAJOR.MINOR.PATCH)")
        return value


class AgentUpdate(Input):
    """Change an agent. Id, tenant, parent and status are not changed here."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=255)
    email: str | None = Field(None, max_length=320)
    description: str | None = Field(None, max_length=2_000)
    agent_type: str | None = Field(None, min_length=1, max_length=50, pattern=r"^[a-z0-9_\-]+$")
    version: str | None = Field(None, max_length=64)
    owner: str | None = Field(None, max_length=255)
    deployment_env: DeploymentEnv | None = None
    capabilities: CapabilitiesIn | None = None
    asset_card_id: str | None = Field(None, max_length=100)
    golden_thread: GoldenThreadIn | None = None
    metadata: dict[str, Any] | None = None

    _email = field_validator("email")(lambda cls, v: normalise_email(v) if v is not None else None)
    _metadata = field_validator("metadata")(lambda cls, v: _metadata_size(v) if v is not None else None)

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str | None) -> str | None:
        if value is not None and not is_semver(value):
            raise ValueError("not a semantic version (MAJOR.MINOR.PATCH)")
        return value


class Lineage(BaseModel):
    """Where the agent sits in its family tree."""

    parent_id: uuid.UUID | None
    depth: int


class AgentOut(BaseModel):
    """An agent record."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    client_id: str
    name: str
    email: str | None
    description: str | None
    agent_type: str
    version: str
    owner: str | None
    deployment_env: str
    status: AgentStatus
    liveness: Liveness
    capabilities: dict[str, Any]
    asset_card_id: str | None
    golden_thread: dict[str, Any] | None
    lineage: Lineage
    metadata: dict[str, Any]
    last_seen_at: datetime | None
    last_auth_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AgentPage(BaseModel):
    """One page of agents (the seed's shape: `agents`, `total`, `page`, plus `limit`)."""

    agents: list[AgentOut]
    total: int
    page: int
    limit: int


class StatusChange(Input):
    """Why an agent is being suspended, reactivated or deregistered."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=1_000)


class Registered(BaseModel):
    """A registered agent: its OAuth client credentials (the secret shown once) and a first token."""

    agent_id: uuid.UUID
    client_id: str
    client_secret: str
    identity_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_at: datetime
    agent: AgentOut


class CredentialIn(Input):
    """A new credential: a client secret (default) or a public JWK for `private_key_jwt`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("default", min_length=1, max_length=255)
    public_jwk: dict[str, Any] | None = Field(None, description="EC P-256 or Ed25519 public key (JWK).")


class CredentialOut(BaseModel):
    """A credential as listed: never the secret."""

    id: uuid.UUID
    agent_id: uuid.UUID
    kind: Literal["client_secret", "public_key"]
    name: str
    secret_prefix: str | None
    jwk_thumbprint: str | None
    status: Literal["active", "grace", "expired", "revoked"]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_from: uuid.UUID | None
    last_used_at: datetime | None


class CredentialCreated(CredentialOut):
    """A new client secret, shown this once (None for a public key)."""

    client_secret: str | None


class RotateCredentialIn(Input):
    """Rotate a client secret."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: int | None = Field(None, ge=0, le=30 * 86_400)


class SigningKeyOut(BaseModel):
    """A signing key as listed: its public facts, never the private key."""

    kid: str = Field(description="Key id (RFC 7638 thumbprint), the `kid` header of the tokens it signs.")
    alg: str
    status: Literal["active", "retired"]
    created_at: datetime
    retired_at: datetime | None
    publish_until: datetime | None = Field(
        description="A retired key leaves the JWKS after this (its last token's expiry plus leeway)."
    )
    published: bool = Field(description="Whether the key is in the JWKS now.")
    signing: bool = Field(description="Whether new tokens are signed with this key (on this replica).")


class SigningKeyList(BaseModel):
    """Every signing key, newest first."""

    active_kid: str = Field(description="The key new tokens are signed with.")
    keys: list[SigningKeyOut]
