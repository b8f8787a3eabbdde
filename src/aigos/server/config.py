"""Server configuration, read from ``AIGOS_*`` environment variables (and an optional ``.env`` file).

Every variable is listed with its default in ``.env.example`` and the README; a test keeps the three in step.
"""

from __future__ import annotations

import secrets
import uuid
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DatabaseKind = Literal["sqlite", "postgresql"]
BusKind = Literal["memory", "redis"]


class ConfigError(Exception):
    """The configuration cannot work; the message says which variable to change."""


class Settings(BaseSettings):
    """All of the server's settings. Field ``foo_bar`` is read from ``AIGOS_FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_prefix="AIGOS_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
    )

    env: Literal["development", "production", "test"] = Field(
        "development", description="Deployment environment; `production` requires an explicit secret key."
    )
    data_dir: Path = Field(Path(".aigos"), description="Where the embedded database and secret key live.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL. Unset: SQLite file in the data dir. "
        "PostgreSQL: `postgresql+asyncpg://user:pass@host:5432/db`.",
    )
    database_migration_url: str | None = Field(
        None, description="URL of a role allowed to change the schema; defaults to the database URL."
    )
    database_pool_size: int = Field(20, ge=1, le=500, description="Connections kept per process.")
    database_max_overflow: int = Field(10, ge=0, le=500, description="Extra connections under bursts.")
    database_timeout_seconds: float = Field(5.0, gt=0, description="Connect timeout.")
    database_pool_timeout_seconds: float = Field(
        1.0, gt=0, description="Wait for a pooled connection (PostgreSQL: a lock too); then DATABASE_BUSY."
    )
    redis_url: str | None = Field(
        None, description="Redis URL. Unset: the in-process bus (one process only)."
    )
    redis_prefix: str = Field("aigos:", description="Prefix of every Redis key and channel.")
    migrate_on_start: bool = Field(True, description="Apply database migrations when the server starts.")
    secret_key: SecretStr | None = Field(
        None,
        description="Server pepper for hashing API keys and client secrets (>= 32 chars). Unset: embedded "
        "mode generates one in the data dir; PostgreSQL mode refuses to start without it.",
    )
    bootstrap_admin_token: SecretStr | None = Field(
        None, description="Platform-admin token to install on first start instead of a random one."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log threshold.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="Log line format; `auto`: console on a terminal, JSON otherwise."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; empty disables CORS."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted.")
    request_head_timeout_seconds: float = Field(
        10.0, gt=0, description="A request's line and headers must arrive within this; else 408 and closed."
    )
    request_body_timeout_seconds: float = Field(
        30.0, gt=0, description="A request's body must arrive within this after its head; else closed."
    )
    request_deadline_seconds: float = Field(
        5.0,
        gt=0,
        description="A request not committed within this of its arrival is stopped: 503 DEADLINE_EXCEEDED.",
    )
    max_requests_in_flight: int = Field(
        16, ge=1, description="Requests one worker handles at once (health and kill switch apart)."
    )
    admission_wait_seconds: float = Field(
        0.25, ge=0, description="How long a request beyond that waits for its turn; then 503 OVERLOADED."
    )
    forwarded_allow_ips: str = Field(
        "",
        description="Comma-separated proxy addresses/networks whose X-Forwarded-For/-Proto are trusted "
        "(`*`: any); empty trusts no forwarding header.",
    )
    hsts_max_age: int = Field(31_536_000, ge=0, description="HSTS max-age in seconds; 0 omits the header.")
    shutdown_timeout_seconds: float = Field(
        10.0, gt=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    ready_timeout_seconds: float = Field(2.0, gt=0, description="Per-dependency timeout of /health/ready.")
    signup_enabled: bool = Field(
        True, description="Anyone may create a tenant; when false only the platform-admin token can."
    )
    auth_failures_per_client: int = Field(
        20,
        ge=1,
        description="Failed sign-ins (client secrets, passwords) allowed per client or email per window.",
    )
    auth_failures_per_address: int = Field(
        50, ge=1, description="Failed sign-ins allowed per source address per window."
    )
    auth_failure_window_seconds: float = Field(
        300.0, gt=0, description="Window over which failed sign-ins are counted, seconds."
    )
    signups_per_address: int = Field(
        20, ge=1, description="Anonymous signups allowed per source address per signup window."
    )
    signup_window_seconds: float = Field(3600.0, gt=0, description="Window of the signup limit, seconds.")
    session_ttl_seconds: int = Field(
        3600, ge=60, le=86_400, description="Lifetime of a sign-in session (POST /v1/auth/login)."
    )
    invitation_ttl_seconds: int = Field(
        7 * 86_400, ge=300, le=90 * 86_400, description="How long a member invitation can be accepted."
    )
    default_rate_limit_rpm: int = Field(60, ge=1, description="Requests per minute of an API key by default.")
    default_rate_limit_rph: int = Field(1000, ge=1, description="Requests per hour of an API key by default.")
    api_key_rotation_grace_seconds: int = Field(
        86_400, ge=0, description="How long a rotated API key keeps working beside its successor."
    )
    issuer: str | None = Field(
        None,
        description="OAuth issuer URL put in tokens and discovery (e.g. https://aigos.example.com). "
        "Required with PostgreSQL; unset in embedded mode: the URL each request came in on.",
    )
    token_ttl_seconds: int = Field(3600, ge=60, le=86_400, description="Lifetime of agent access tokens.")
    token_alg: Literal["ES256", "EdDSA"] = Field("ES256", description="Algorithm of new signing keys.")
    max_lineage_depth: int = Field(5, ge=0, le=32, description="How deep agents may spawn child agents.")
    password_hash_memory_kib: int = Field(
        65_536, ge=1_024, le=4_194_304, description="argon2id memory per human-password hash, in KiB."
    )
    password_hash_time_cost: int = Field(3, ge=1, le=20, description="argon2id passes per password hash.")
    credential_rotation_grace_seconds: int = Field(
        86_400, ge=0, description="How long a rotated agent secret keeps working beside its successor."
    )
    audit_retention_days: int = Field(
        90, ge=1, le=36_500, description="How long event-log entries are kept (whole days; pruned daily)."
    )
    audit_checkpoint_seconds: float = Field(
        60.0, gt=0, description="How often new event-log entries are sealed into a signed checkpoint."
    )
    audit_queue_size: int = Field(
        100_000, ge=100, description="Buffered events held per process before new ones are dropped."
    )
    audit_batch_size: int = Field(1_000, ge=1, le=50_000, description="Events appended per transaction.")
    audit_flush_seconds: float = Field(
        0.2, gt=0, description="Longest wait before buffered events are written."
    )
    audit_journal: bool = Field(
        True, description="Journal buffered events in <data>/journal before acknowledging them (crash-safe)."
    )
    audit_journal_sync_seconds: float = Field(
        1.0, gt=0, description="How often the event journal is fsynced (a power loss loses what came since)."
    )
    metrics_enabled: bool = Field(
        True, description="Record Prometheus metrics (off only to measure what they cost; /metrics stays)."
    )
    usage_flush_seconds: float = Field(
        10.0, gt=0, description="How often buffered usage counts and key activity are written."
    )
    killswitch_command_ttl_seconds: int = Field(
        86_400, ge=60, le=30 * 86_400, description="How long a kill-switch command stays valid for delivery."
    )
    killswitch_keepalive_seconds: float = Field(
        15.0, gt=0, description="Interval of keep-alive comments on kill-switch streams."
    )
    killswitch_max_streams_per_agent: int = Field(
        4,
        ge=1,
        le=1_000,
        description="Kill-switch streams one agent may hold per server process; a newer one ends the oldest.",
    )
    killswitch_delivery_flush_seconds: float = Field(
        0.5, gt=0, description="How often kill-switch deliveries are recorded in the database (batched)."
    )
    aigrc_api_url: str | None = Field(
        None,
        validation_alias=AliasChoices("AIGOS_AIGRC_API_URL", "AIGRC_API_URL"),
        description="An AIGRC-compatible source of asset cards (`AIGRC_API_URL` is read too); unset: none.",
    )
    aigrc_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AIGOS_AIGRC_API_KEY", "AIGRC_API_KEY"),
        description="The bearer key for the AIGRC source (`AIGRC_API_KEY` is read too).",
    )
    aigrc_tenant_id: uuid.UUID | None = Field(
        None, description="The tenant the AIGRC source's cards are saved in (needed with the source)."
    )
    aigrc_sync_seconds: float = Field(
        300.0, ge=0, description="How often cards are synced from the AIGRC source; 0: only on demand."
    )
    aigrc_allow_private: bool = Field(
        False,
        description="Let the AIGRC source and webhook be on a private or loopback address, over plain HTTP.",
    )
    aigrc_webhook_url: str | None = Field(
        None, description="Where the AIGRC tenant's runtime events are POSTed as signed EVT-001 envelopes."
    )
    aigrc_webhook_secret: SecretStr | None = Field(
        None, description="The HMAC-SHA256 key that signs each webhook delivery (X-AIGOS-Signature)."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("issuer")
    @classmethod
    def _issuer_is_a_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # RFC 8414 section 2: an https URL (http allowed for local use) with no query or fragment.
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("AIGOS_ISSUER must be an http(s) URL without query or fragment")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        url = self.resolved_database_url
        if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
            raise ValueError(
                "AIGOS_DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        if self.secret_key is not None and len(self.secret_key.get_secret_value()) < 32:
            raise ValueError("AIGOS_SECRET_KEY must be at least 32 characters")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL in use: the configured one or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'aigos.db').as_posix()}"

    @property
    def resolved_migration_url(self) -> str:
        """The URL migrations run with."""
        return self.database_migration_url or self.resolved_database_url

    @property
    def database_kind(self) -> DatabaseKind:
        """``sqlite`` or ``postgresql``."""
        return "sqlite" if self.resolved_database_url.startswith("sqlite") else "postgresql"

    @property
    def bus_kind(self) -> BusKind:
        """``memory`` or ``redis``."""
        return "redis" if self.redis_url else "memory"

    @property
    def embedded(self) -> bool:
        """True when any piece of state lives inside this process, so only one process may run."""
        return self.database_kind == "sqlite" or self.bus_kind == "memory"

    def check_issuer(self) -> None:
        """Refuse to serve PostgreSQL replicas without ``AIGOS_ISSUER`` (``ConfigError``).

        Tokens name their issuer and every replica must name the same one; derived from each request's
        Host header it would differ per address used and follow whatever a client sends.
        """
        if self.issuer is None and self.database_kind == "postgresql":
            raise ConfigError(
                "AIGOS_ISSUER is required with PostgreSQL: every replica must put the same issuer in the "
                "tokens it signs. Set it to the public base URL of the server, e.g. "
                "AIGOS_ISSUER=https://aigos.example.com"
            )

    @property
    def issuer_notice(self) -> str | None:
        """What to tell the operator at start when the issuer is derived rather than configured."""
        if self.issuer is not None:
            return None
        return (
            "AIGOS_ISSUER is not set: tokens and discovery name the URL each request came in on (embedded "
            "mode only). Set AIGOS_ISSUER to the server's public URL to fix it."
        )

    @cached_property
    def pepper(self) -> bytes:
        """The secret mixed into every stored hash of an API key or client secret."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        if self.database_kind == "postgresql" or self.env == "production":
            raise ConfigError(
                "AIGOS_SECRET_KEY is required with PostgreSQL or in production: every replica must hash "
                "secrets with the same key. Generate one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'"
            )
        return _embedded_secret(self.data_dir).encode()


def _embedded_secret(data_dir: Path) -> str:
    """Read or create the embedded mode's secret key file (mode 0600, in a folder of mode 0700)."""
    from aigos.server.datadir import private_file  # imports this module

    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(48)
    private_file(path)
    path.write_text(value)
    return value
