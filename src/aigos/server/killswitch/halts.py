"""The replica's fleet halts in memory: what the policy check asks first, with no database round trip.

Per tenant: the tenant-wide halt in force (a PAUSE or TERMINATE fleet command), the lineage halts by root,
the latest RESUME per scope (sent to agents that connect later, with the halts, in sequence order) and the
highest fleet sequence applied, so a command heard twice (bus and PostgreSQL) or late is applied once.
Filled from the database at start and after every lost connection, then kept current from the bus and
PostgreSQL notices. A lineage halt covers an agent when its root is the agent or one of its ancestors,
which are read once per agent (a parent never changes) and only while the tenant has a lineage halt.

A fleet RESUME is *resuming* until its bookkeeping is done: the agents it covers are still ``paused`` in
their statuses, though the RESUME already decided that every paused agent of its scope becomes active (as
its bookkeeping will make it). Checks ask ``resuming`` for a paused agent, so a RESUME lifts a fleet
pause everywhere as fast as the PAUSE imposed it. Should the bookkeeping's notice never arrive, it counts
as resuming for ``RESUMING_SECONDS`` at most; past that the statuses speak again (which only denies).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.agents import AgentStatus
from aigos.core.commands import TENANT_SCOPE, FleetCommand, covers, parse_time
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.identity import lineage

#: Agents whose ancestors are remembered (cleared past it: they are read again when needed).
MAX_REMEMBERED = 100_000
#: How long a fleet RESUME counts as resuming without word that its bookkeeping is done (the bookkeeping
#: of 10,000 agents takes a few seconds; a replica that died during it is relieved within a sweep).
RESUMING_SECONDS = 60.0
_STATUS = {"PAUSE": AgentStatus.PAUSED.value, "TERMINATE": AgentStatus.TERMINATED.value}


def _key(command: FleetCommand) -> str:
    return command.scope.get("root_agent_id", TENANT_SCOPE).lower()


@dataclass
class _Tenant:
    sequence: int = 0
    #: Halts in force by scope key (``tenant`` or the root's id).
    halts: dict[str, FleetCommand] = field(default_factory=dict)
    #: The latest RESUME per scope key.
    resumes: dict[str, FleetCommand] = field(default_factory=dict)
    #: RESUMEs whose bookkeeping is not known to be done, by command id, with when they stop counting.
    resuming: dict[str, tuple[FleetCommand, float]] = field(default_factory=dict)


class Halts:
    """The fleet halts of every tenant, as this replica knows them."""

    def __init__(self, database: Database, max_depth: int) -> None:
        self.database = database
        self.max_depth = max_depth
        self._tenants: dict[uuid.UUID, _Tenant] = {}
        self._ancestors: dict[uuid.UUID, tuple[str, ...]] = {}

    # -- hot path ---------------------------------------------------------------------------------

    async def halted(self, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> str | None:
        """The status a halt in force imposes on the agent (``paused`` / ``terminated``), or None."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None or not tenant.halts:
            return None
        found = tenant.halts.get(TENANT_SCOPE)
        if found is None or (found.command != "TERMINATE" and len(tenant.halts) > 1):
            for command in self._covering(tenant, str(agent_id), await self.ancestors(tenant_id, agent_id)):
                if found is None or command.command == "TERMINATE":
                    found = command
        return None if found is None else _STATUS[found.command]

    async def resuming(self, tenant_id: uuid.UUID, agent_id: uuid.UUID, paused_at: float) -> bool:
        """Whether a fleet RESUME not yet bookkept covers the agent, paused at ``paused_at`` (Unix time):
        only a RESUME issued after the pause lifts it (a pause issued after the RESUME stands)."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None or not tenant.resuming:
            return False
        now = time.monotonic()
        if any(until <= now for _, until in tenant.resuming.values()):
            tenant.resuming = {k: v for k, v in tenant.resuming.items() if v[1] > now}
        current = [
            command
            for command, _ in tenant.resuming.values()
            if parse_time(command.issued_at).timestamp() > paused_at
        ]
        if any(command.scope.get("kind") == TENANT_SCOPE for command in current):
            return True
        if not current:
            return False
        ancestors = await self.ancestors(tenant_id, agent_id)
        return any(covers(command.scope, str(agent_id), ancestors) for command in current)

    def bookkept(self, tenant_id: uuid.UUID, command_id: str) -> None:
        """The RESUME ``command_id``'s bookkeeping is done: the statuses say active now."""
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            tenant.resuming.pop(command_id, None)

    async def ancestors(
        self, tenant_id: uuid.UUID, agent_id: uuid.UUID, session: AsyncSession | None = None
    ) -> tuple[str, ...]:
        """The agent's ancestors, parent first (read once per agent, in ``session`` if given)."""
        known = self._ancestors.get(agent_id)
        if known is not None:
            return known
        if session is not None:
            found = await lineage.ancestors(session, tenant_id, agent_id, max_depth=self.max_depth)
        else:
            async with self.database.session() as own:
                await set_tenant(own, tenant_id)
                found = await lineage.ancestors(own, tenant_id, agent_id, max_depth=self.max_depth)
        if len(self._ancestors) >= MAX_REMEMBERED:
            self._ancestors.clear()
        known = self._ancestors[agent_id] = tuple(str(a) for a in found)
        return known

    @staticmethod
    def _covering(tenant: _Tenant, agent_id: str, ancestors: tuple[str, ...]) -> list[FleetCommand]:
        return [command for command in tenant.halts.values() if covers(command.scope, agent_id, ancestors)]

    def for_agent(
        self, tenant_id: uuid.UUID, agent_id: uuid.UUID, ancestors: tuple[str, ...]
    ) -> list[FleetCommand]:
        """What an agent that connects now must hear: the halts covering it and the latest RESUMEs covering
        it, in sequence order (so the last one states where it stands)."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            return []
        agent = str(agent_id)
        found = self._covering(tenant, agent, ancestors)
        found += [c for c in tenant.resumes.values() if covers(c.scope, agent, ancestors)]
        # An expired command would only be refused: past it the agent's own status (set by then) speaks.
        now = datetime.now(UTC)
        current = [c for c in found if parse_time(c.expires_at) > now]
        return sorted(current, key=lambda command: command.sequence)

    def sequence(self, tenant_id: uuid.UUID) -> int:
        """The highest fleet sequence applied for the tenant."""
        tenant = self._tenants.get(tenant_id)
        return 0 if tenant is None else tenant.sequence

    # -- changes ----------------------------------------------------------------------------------

    def apply(self, command: FleetCommand, lifted: Iterable[str] = ()) -> bool:
        """Apply a committed fleet command (and the halts it lifted); False if it was applied already."""
        tenant_id = uuid.UUID(command.tenant_id)
        tenant = self._tenants.setdefault(tenant_id, _Tenant())
        if command.sequence <= tenant.sequence:
            return False
        tenant.sequence = command.sequence
        self._put(tenant, command, set(lifted))
        return True

    @staticmethod
    def _put(tenant: _Tenant, command: FleetCommand, lifted: set[str]) -> None:
        if lifted:
            tenant.halts = {k: c for k, c in tenant.halts.items() if c.command_id not in lifted}
        key = _key(command)
        if command.command == "RESUME":
            tenant.resumes[key] = command
            tenant.resuming[command.command_id] = (command, time.monotonic() + RESUMING_SECONDS)
            return
        current = tenant.halts.get(key)
        # A PAUSE never softens a TERMINATE of the same scope.
        if current is None or not (current.command == "TERMINATE" and command.command == "PAUSE"):
            tenant.halts[key] = command

    def retire(self, tenant_id: uuid.UUID, command_id: str) -> None:
        """A TERMINATE halt whose agents are all terminated now: their statuses carry it from here on."""
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            tenant.halts = {k: c for k, c in tenant.halts.items() if c.command_id != command_id}

    def replace(
        self,
        active: list[FleetCommand],
        resumes: list[FleetCommand],
        sequences: dict[uuid.UUID, int],
        bookkept: Iterable[str] = (),
    ) -> dict[uuid.UUID, int]:
        """Replace everything with what the database holds (``bookkept``: the ids of the RESUMEs whose
        bookkeeping is done); returns each tenant's sequence before."""
        before = {tenant_id: tenant.sequence for tenant_id, tenant in self._tenants.items()}
        tenants: dict[uuid.UUID, _Tenant] = {t: _Tenant(sequence=s) for t, s in sequences.items()}
        for command in sorted([*active, *resumes], key=lambda c: c.sequence):
            tenant = tenants.setdefault(uuid.UUID(command.tenant_id), _Tenant())
            self._put(tenant, command, set())
        done = set(bookkept)
        for tenant in tenants.values():
            tenant.resuming = {k: v for k, v in tenant.resuming.items() if k not in done}
        self._tenants = tenants
        return before
