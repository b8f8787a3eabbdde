"""When agents were last seen and last authenticated, and credentials last used: buffered stamps on
identity's own rows, written in batches by ``Touches`` (the app builds them, identity names the columns)."""

from __future__ import annotations

from aigos.server.db import Database
from aigos.server.identity.models import Agent, AgentCredential
from aigos.server.touches import Touches


def agent_seen(database: Database, flush_seconds: float) -> Touches:
    """``agents.last_seen_at``: the agent's heartbeats."""
    return Touches(database, Agent, "last_seen_at", flush_seconds)


def agent_authenticated(database: Database, flush_seconds: float) -> Touches:
    """``agents.last_auth_at``: when the agent last obtained a token."""
    return Touches(database, Agent, "last_auth_at", flush_seconds)


def credential_used(database: Database, flush_seconds: float) -> Touches:
    """``agent_credentials.last_used_at``: which secret or key authenticated at the token endpoint."""
    return Touches(database, AgentCredential, "last_used_at", flush_seconds)
