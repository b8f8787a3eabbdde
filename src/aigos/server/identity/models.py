"""Tables of the identity context."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from aigos.server.db.base import Base
from aigos.server.db.types import JSONDocument, UTCDateTime, utcnow


class Agent(Base):
    """A governed AI agent. Its id is also its OAuth 2.0 ``client_id`` and its tokens' ``sub``."""

    __tablename__ = "agents"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email", name="uq_agents_tenant_id_email"),
        Index("ix_agents_tenant_id_status", "tenant_id", "status"),
        Index("ix_agents_tenant_id_created_at", "tenant_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    agent_type: Mapped[str] = mapped_column(String(50), default="generic")
    version: Mapped[str] = mapped_column(String(64), default="1.0.0")
    owner: Mapped[str | None] = mapped_column(String(255), default=None)
    deployment_env: Mapped[str] = mapped_column(String(20), default="development")
    status: Mapped[str] = mapped_column(String(20), default="active")
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    asset_card_id: Mapped[str | None] = mapped_column(String(100), default=None)
    golden_thread: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, default=None)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("agents.id"), default=None)
    lineage_depth: Mapped[int] = mapped_column(Integer, default=0)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDocument, default=dict)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_auth_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AgentCredential(Base):
    """One way for an agent to authenticate: a client secret (stored as HMAC) or a public JWK."""

    __tablename__ = "agent_credentials"
    __table_args__ = (Index("ix_agent_credentials_tenant_id_agent_id", "tenant_id", "agent_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    agent_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("agents.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(255), default="default")
    secret_prefix: Mapped[str | None] = mapped_column(String(32), default=None)
    secret_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    public_jwk: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, default=None)
    jwk_thumbprint: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    rotated_from: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class SigningKey(Base):
    """A token-signing key pair. The private key is encrypted at rest (AES-256-GCM)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(10))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: After this, no token it signed can still be valid: the key leaves the JWKS.
    publish_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class RevokedToken(Base):
    """A token revoked before its expiry; kept until it would have expired."""

    __tablename__ = "revoked_tokens"
    __table_args__ = (Index("ix_revoked_tokens_expires_at", "expires_at"),)

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    agent_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
