"""What every replica must know at once about agents without asking the database: who may not act.

Held in memory: agents whose status forbids tokens or actions (paused, suspended, terminated, archived)
and revoked token ids. Changes are written to the database, then announced on the bus; each replica
applies them on receipt. After a lost bus connection (a ``resync`` message) the whole state is reloaded
from the database, and while the connection is down answers fall back to the database (slow, correct).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import structlog
from sqlalchemy import select

from aigos.core.agents import AgentStatus
from aigos.core.canonical import canonical, parse
from aigos.server.bus import Bus, Subscription
from aigos.server.db import Database
from aigos.server.db.database import set_platform_scope
from aigos.server.db.types import utcnow
from aigos.server.identity.models import Agent, RevokedToken

log = structlog.get_logger("aigos.identity.state")
CHANNEL = "identity"


class IdentityState:
    """The replica's copy of agent restrictions and token revocations."""

    def __init__(self, database: Database, bus: Bus) -> None:
        self.database = database
        self.bus = bus
        self._restricted: dict[uuid.UUID, AgentStatus] = {}
        self._revoked: dict[str, float] = {}
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    # -- reads (hot path) -------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """Whether bus notifications are flowing, so the memory state can be trusted."""
        return self._subscription is not None and self._subscription.connected

    def status_of(self, agent_id: uuid.UUID) -> AgentStatus:
        """The agent's status as far as restrictions go (``active`` unless restricted)."""
        return self._restricted.get(agent_id, AgentStatus.ACTIVE)

    def is_revoked(self, jti: str) -> bool:
        """Whether the token id was revoked."""
        return jti in self._revoked

    # -- writes -----------------------------------------------------------------------------------

    async def announce_status(self, agent_id: uuid.UUID, status: str) -> None:
        """Apply a status change here and tell every other replica (call after the commit)."""
        self._apply({"type": "status", "agent_id": str(agent_id), "status": status})
        await self._publish({"type": "status", "agent_id": str(agent_id), "status": status})

    async def announce_revoked(self, jti: str, expires_at: float) -> None:
        """Apply a token revocation here and tell every other replica (call after the commit)."""
        message = {"type": "revoked", "jti": jti, "exp": expires_at}
        self._apply(message)
        await self._publish(message)

    async def _publish(self, message: dict[str, Any]) -> None:
        try:
            await self.bus.pubsub.publish(CHANNEL, canonical(message))
        except Exception:
            # Other replicas catch up from the database on their next resync; this one is already current.
            log.exception("identity_publish_failed", message=message)

    def _apply(self, message: dict[str, Any]) -> None:
        if message.get("type") == "status":
            agent_id = uuid.UUID(str(message["agent_id"]))
            status = AgentStatus(str(message["status"]))
            if status is AgentStatus.ACTIVE:
                self._restricted.pop(agent_id, None)
            else:
                self._restricted[agent_id] = status
        elif message.get("type") == "revoked":
            self._revoked[str(message["jti"])] = float(message["exp"])

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe, then load the state (in that order, so nothing published in between is missed)."""
        self._subscription = self.bus.pubsub.subscribe(CHANNEL)
        await self._subscription.open()
        await self.reload()
        self._task = asyncio.create_task(self._listen(), name="identity-state")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            await self._subscription.close()

    async def reload(self) -> None:
        """Read every restricted agent and unexpired revocation from the database."""
        now = utcnow()
        async with self.database.session() as session:
            await set_platform_scope(session)
            agents = await session.execute(
                select(Agent.id, Agent.status).where(Agent.status != AgentStatus.ACTIVE.value)
            )
            revoked = await session.execute(
                select(RevokedToken.jti, RevokedToken.expires_at).where(RevokedToken.expires_at > now)
            )
            self._restricted = {row.id: AgentStatus(row.status) for row in agents}
            self._revoked = {row.jti: row.expires_at.timestamp() for row in revoked}

    def prune(self) -> None:
        """Forget revocations of tokens that have expired anyway."""
        now = time.time()
        for jti in [jti for jti, exp in self._revoked.items() if exp < now]:
            del self._revoked[jti]

    async def _listen(self) -> None:
        assert self._subscription is not None
        async for message in self._subscription:
            try:
                if message.is_resync:
                    await self.reload()
                else:
                    self._apply(parse(message.data))
            except Exception:
                log.exception("identity_state_update_failed")
