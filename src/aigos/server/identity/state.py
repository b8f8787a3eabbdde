"""What every replica must know at once about agents without asking the database: who may not act.

Held in memory: agents whose status forbids tokens or actions (paused, suspended, terminated, archived)
and revoked token ids. Changes are written to the database, then announced on the bus; each replica
applies them on receipt. After a lost bus connection (a ``resync`` message) the whole state is reloaded
from the database, and while the connection is down answers fall back to the database (slow, correct).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select

from aigos.core.agents import AgentStatus
from aigos.core.canonical import canonical
from aigos.server.bus import Bus
from aigos.server.bus.follower import Follower
from aigos.server.db import Database
from aigos.server.db.database import set_platform_scope, set_tenant
from aigos.server.db.types import utcnow
from aigos.server.identity.models import Agent, RevokedToken
from aigos.server.identity.tokens import AgentSnapshot

log = structlog.get_logger("aigos.identity.state")
CHANNEL = "identity"
MAX_REMEMBERED_AGENTS = 100_000
#: Agents per status message: a tenant-wide kill switch is a few messages, not one per agent.
STATUS_BATCH = 500
#: Announced after a signing-key rotation: every replica re-reads the published keys.
KEYS_CHANGED: dict[str, Any] = {"type": "keys"}
KeysChanged = Callable[[], Awaitable[None]]


async def publish_keys_changed(bus: Bus) -> int:
    """Tell every replica listening on ``bus`` to reload the signing keys; returns how many heard it."""
    return await bus.pubsub.publish(CHANNEL, canonical(KEYS_CHANGED))


@dataclass(frozen=True)
class CachedClient:
    """A client secret that authenticated before, with what a token for its agent is made of."""

    credential_id: uuid.UUID
    expires_at: float | None
    agent: AgentSnapshot


class IdentityState(Follower):
    """The replica's copy of agent restrictions and token revocations.

    ``on_keys_changed`` is awaited when another process announces a signing-key rotation (and after a
    lost bus connection, when such an announcement may have been missed).
    """

    name = "identity-state"

    def __init__(self, database: Database, bus: Bus, on_keys_changed: KeysChanged | None = None) -> None:
        super().__init__(bus, CHANNEL)
        self.database = database
        self.on_keys_changed = on_keys_changed
        self._restricted: dict[uuid.UUID, AgentStatus] = {}
        #: When the status applied for each agent was announced: an older announcement never wins.
        self._status_at: dict[uuid.UUID, float] = {}
        #: Agents known to belong to a tenant (that never changes), so tokens are checked against it once.
        self._tenants: dict[uuid.UUID, uuid.UUID] = {}
        self._revoked: dict[str, float] = {}
        #: Secret digest -> client, so the token endpoint needs no database round trip for a known client.
        #: Dropped on any change to the credential or the agent, on every replica, through the bus.
        self._clients: dict[str, CachedClient] = {}

    # -- reads (hot path) -------------------------------------------------------------------------

    def status_of(self, agent_id: uuid.UUID) -> AgentStatus:
        """The agent's status as far as restrictions go (``active`` unless restricted)."""
        return self._restricted.get(agent_id, AgentStatus.ACTIVE)

    def status_since(self, agent_id: uuid.UUID) -> float:
        """When the agent's current status was set, as far as this replica heard (Unix time; 0 if never)."""
        return self._status_at.get(agent_id, 0.0)

    def is_revoked(self, jti: str) -> bool:
        """Whether the token id was revoked."""
        return jti in self._revoked

    async def belongs(self, agent_id: uuid.UUID, tenant_id: uuid.UUID) -> bool:
        """Whether the agent exists in the tenant: a token's ``sub`` and ``aud`` must agree.

        Asked of the database once per agent and process; the answer, when yes, never changes.
        """
        if self._tenants.get(agent_id) == tenant_id:
            return True
        async with self.database.session() as session:
            await set_tenant(session, tenant_id)
            found = await session.scalar(
                select(Agent.id).where(Agent.id == agent_id, Agent.tenant_id == tenant_id)
            )
        if found is None:
            return False
        if len(self._tenants) >= MAX_REMEMBERED_AGENTS:
            self._tenants.clear()
        self._tenants[agent_id] = tenant_id
        return True

    def cached_client(self, secret_digest: str) -> CachedClient | None:
        """The client behind a secret digest, if cached and the bus is live (else the caller asks the DB)."""
        if not self.live:
            return None
        return self._clients.get(secret_digest)

    def remember_client(self, secret_digest: str, client: CachedClient) -> None:
        """Cache a client that just authenticated against the database."""
        if len(self._clients) >= MAX_REMEMBERED_AGENTS:
            self._clients.clear()
        self._clients[secret_digest] = client

    async def announce_client_changed(self, credential_id: uuid.UUID) -> None:
        """A credential was revoked or rotated: every replica forgets it at once (call before commit)."""
        message = {"type": "credential", "credential_id": str(credential_id)}
        self._apply(message)
        await self.publish(CHANNEL, message)

    async def announce_agent_changed(self, agent_id: uuid.UUID) -> None:
        """An agent's claims changed: every replica forgets its cached clients (call before commit)."""
        message = {"type": "agent", "agent_id": str(agent_id)}
        self._apply(message)
        await self.publish(CHANNEL, message)

    # -- writes -----------------------------------------------------------------------------------

    async def announce_status(self, agent_id: uuid.UUID, status: str) -> None:
        """Apply a status change here and tell every other replica (call after the commit)."""
        await self.announce_statuses([agent_id], status)

    async def announce_statuses(
        self, agent_ids: Sequence[uuid.UUID], status: str, *, wait: bool = True
    ) -> None:
        """``announce_status`` for many agents in one message per ``STATUS_BATCH`` (a tenant-wide stop).

        Without ``wait`` the messages are published in the background (``publish_soon``).
        """
        for message in self._status_messages(agent_ids, status):
            self._apply(message)
            if wait:
                await self.publish(CHANNEL, message)
            else:
                self.publish_soon(CHANNEL, message)

    def restrict(self, agent_ids: Sequence[uuid.UUID], status: str) -> None:
        """Apply a status here only, at once: for a stop, before its commit (a failed commit errs on the
        safe side); the announcement to the other replicas follows the commit."""
        for message in self._status_messages(agent_ids, status):
            self._apply(message)

    @staticmethod
    def _status_messages(agent_ids: Sequence[uuid.UUID], status: str) -> list[dict[str, Any]]:
        at = time.time()
        return [
            {
                "type": "statuses",
                "agent_ids": [str(agent_id) for agent_id in agent_ids[start : start + STATUS_BATCH]],
                "status": status,
                "at": at,
            }
            for start in range(0, len(agent_ids), STATUS_BATCH)
        ]

    async def announce_revoked(self, jti: str, expires_at: float) -> None:
        """Apply a token revocation here and tell every other replica (call after the commit)."""
        message = {"type": "revoked", "jti": jti, "exp": expires_at}
        self._apply(message)
        await self.publish(CHANNEL, message)

    async def announce_keys(self) -> None:
        """Tell every other replica that the signing keys changed (call after the rotation committed)."""
        await self.publish(CHANNEL, KEYS_CHANGED)

    def _apply(self, message: dict[str, Any]) -> None:
        if message.get("type") == "statuses":
            for agent_id in message["agent_ids"]:
                self._apply({**message, "type": "status", "agent_id": agent_id})
        elif message.get("type") == "status":
            agent_id = uuid.UUID(str(message["agent_id"]))
            status = AgentStatus(str(message["status"]))
            # Suspended on one replica and reactivated on another a moment later: the later change must
            # win everywhere, whichever message arrives last.
            at = float(message.get("at") or 0.0)
            if at < self._status_at.get(agent_id, 0.0):
                return
            self._status_at[agent_id] = at
            if status is AgentStatus.ACTIVE:
                self._restricted.pop(agent_id, None)
            else:
                self._restricted[agent_id] = status
        elif message.get("type") == "revoked":
            self._revoked[str(message["jti"])] = float(message["exp"])
            # Revocations matter only until the token would have expired anyway: forget those now and then.
            if len(self._revoked) % 1024 == 0:
                self.prune()
        elif message.get("type") == "credential":
            gone = str(message["credential_id"])
            self._clients = {k: v for k, v in self._clients.items() if str(v.credential_id) != gone}
        elif message.get("type") == "agent":
            gone = str(message["agent_id"])
            self._clients = {k: v for k, v in self._clients.items() if str(v.agent.id) != gone}

    # -- lifecycle --------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the state at start."""
        await self.reload()

    async def resync(self) -> None:
        """Reload everything, keys too: an announcement may have been missed."""
        await self.reload()
        await self._keys_changed()

    async def receive(self, message: dict[str, Any]) -> None:
        """Apply another replica's (or the CLI's key-rotation) announcement."""
        if message.get("type") == KEYS_CHANGED["type"]:
            await self._keys_changed()
        else:
            self._apply(message)

    async def reload(self) -> None:
        """Read every restricted agent and unexpired revocation from the database."""
        now = utcnow()
        async with self.database.session() as session:
            await set_platform_scope(session)
            agents = await session.execute(
                select(Agent.id, Agent.status, Agent.updated_at).where(
                    Agent.status != AgentStatus.ACTIVE.value
                )
            )
            revoked = await session.execute(
                select(RevokedToken.jti, RevokedToken.expires_at).where(RevokedToken.expires_at > now)
            )
            self._clients = {}
            rows = agents.all()
            self._restricted = {row.id: AgentStatus(row.status) for row in rows}
            # No later than the row's last change: a status message older than that is out of date.
            self._status_at = {row.id: row.updated_at.timestamp() for row in rows}
            self._revoked = {row.jti: row.expires_at.timestamp() for row in revoked}

    def prune(self) -> None:
        """Forget revocations of tokens that have expired anyway."""
        now = time.time()
        for jti in [jti for jti, exp in self._revoked.items() if exp < now]:
            del self._revoked[jti]

    async def _keys_changed(self) -> None:
        if self.on_keys_changed is not None:
            await self.on_keys_changed()
            log.info("signing_keys_reloaded")
