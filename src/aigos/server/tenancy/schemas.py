"""API shapes of the tenancy context."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aigos.server.inputs import Input
from aigos.server.tenancy import scopes

Role = Literal["owner", "admin", "member", "viewer"]
Environment = Literal["test", "live"]
PlanTier = Literal["free", "pro", "enterprise"]
TenantStatus = Literal["active", "suspended"]

SLUG = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}$")


def normalise_email(value: str) -> str:
    """Lower-case and trim an email address, refusing what cannot be one."""
    email = value.strip().lower()
    if not _EMAIL.match(email):
        raise ValueError("not a valid email address")
    return email


class TenantOut(BaseModel):
    """A tenant."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    slug: str
    plan_tier: str
    status: str
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class SignupIn(Input):
    """Create a tenant with its owner and first API key."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    slug: str = Field(pattern=SLUG, max_length=63, description="Lower-case letters, digits and hyphens.")
    owner_email: str = Field(max_length=320)
    owner_password: str = Field(min_length=12, max_length=1024)
    plan_tier: PlanTier | None = Field(None, description="Platform admin only; signups start on `free`.")
    api_key_environment: Environment = "live"

    _email = field_validator("owner_email")(lambda cls, v: normalise_email(v))


class TenantUpdate(Input):
    """Change a tenant. ``plan_tier`` and ``status`` are for the platform admin."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=255)
    settings: dict[str, Any] | None = None
    plan_tier: PlanTier | None = None
    status: TenantStatus | None = None


class ApiKeyIn(Input):
    """Create an API key."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    scopes: list[str] = Field(min_length=1, description="What the key may do; see `GET /v1/api-keys/scopes`.")
    environment: Environment = "test"
    expires_at: datetime | None = Field(None, description="When the key stops working (UTC).")
    rate_limit_rpm: int | None = Field(None, ge=1, le=1_000_000)
    rate_limit_rph: int | None = Field(None, ge=1, le=100_000_000)

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        bad = scopes.unknown(value)
        if bad:
            raise ValueError(f"unknown scopes: {', '.join(bad)}")
        return sorted(set(value))

    @field_validator("expires_at")
    @classmethod
    def _future(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("must include a timezone, e.g. 2027-01-01T00:00:00Z")
        if value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value


class ApiKeyOut(BaseModel):
    """An API key as listed: never the secret."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    key_prefix: str
    scopes: list[str]
    environment: str
    status: Literal["active", "grace", "expired", "revoked"]
    rate_limit_rpm: int | None
    rate_limit_rph: int | None
    expires_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None
    rotated_from: uuid.UUID | None
    grace_expires_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    """A new key, with its secret: shown this once, never again."""

    key: str


class RotateIn(Input):
    """Rotate a key."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: int | None = Field(
        None, ge=0, le=30 * 86_400, description="How long the old key keeps working; default from settings."
    )


class SignupOut(BaseModel):
    """The new tenant, its owner and its first API key (the key is shown once)."""

    tenant: TenantOut
    owner: MemberOut
    api_key: ApiKeyCreated


class MemberIn(Input):
    """Add a user to the tenant (the user is created, without a password, if new: an invitation)."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=320)
    role: Role = "member"

    _email = field_validator("email")(lambda cls, v: normalise_email(v))


class MemberUpdate(Input):
    """Change a member's role."""

    model_config = ConfigDict(extra="forbid")

    role: Role


class MemberOut(BaseModel):
    """A member of the tenant."""

    user_id: uuid.UUID
    email: str
    role: Role
    invited: bool = Field(description="True until the person has accepted their invitation.")
    created_at: datetime
    updated_at: datetime


class MemberInvited(MemberOut):
    """A member just invited: the invitation token is in this response only; hand it to the person."""

    invitation_token: str = Field(description="Single-use; accepted at `POST /v1/invitations/accept`.")
    invitation_expires_at: datetime


class InvitationAccept(Input):
    """Accept an invitation. ``password``: required for a new account, else the account's own password."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=256)
    password: str | None = Field(None, min_length=12, max_length=1024)


class InvitationAccepted(BaseModel):
    """The tenant the person has joined, and as what."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: Role


class LoginIn(Input):
    """Sign in to one tenant with the password set at signup (or on accepting an invitation)."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=320)
    password: str = Field(min_length=1, max_length=1024)
    tenant: str = Field(min_length=1, max_length=63, description="The tenant's slug or id.")

    _email = field_validator("email")(lambda cls, v: normalise_email(v))


class LoginOut(BaseModel):
    """A session: a bearer credential for the admin API with the member's role's scopes."""

    token: str = Field(description="Send as `Authorization: Bearer <token>`; shown once.")
    token_type: Literal["Bearer"] = "Bearer"
    expires_at: datetime
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: Role
    scopes: list[str]


class UsageDay(BaseModel):
    """One metric on one day."""

    day: date
    metric: str
    count: int


class UsageOut(BaseModel):
    """A tenant's usage over a period, with its plan's limits."""

    tenant_id: uuid.UUID
    plan_tier: str
    start: date
    end: date
    totals: dict[str, int]
    daily: list[UsageDay]
    limits: dict[str, int | None]
