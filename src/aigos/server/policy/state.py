"""What each replica holds for the check hot path: compiled policy sets per tenant and agents' attributes.

A tenant's policies are loaded once and compiled (``aigos.core.policy.PolicySet``), named by the tenant's
policy-set version. A change raises the version in the database, commits, then is announced on the bus;
each replica loads the new set at the next check. Reading (in batches of about half a MiB of documents)
and compiling are done in pieces that yield to the event loop (``compile_in_pieces``), so a large set never
holds up other requests or ``/health``; while it is compiled, the tenant's checks wait for it at most
``FRESH_WITHIN_SECONDS`` and are then answered from the previous set (a check with no previous set waits
for the new one). An agent's selection of the set, each action's rules in it, and a request's resource
when it is costly to test against them are worked out in pieces too (``select_in_pieces``). A simulation
reuses the set at the version the database holds (``policy_set_at_least``). Agents' targeting attributes
(type, owner, environment, labels) are loaded once per agent and dropped when the identity context
announces the agent changed.

Fail closed: while the bus connection is down a replica cannot know what changed, so checks answer 503
``POLICY_STATE_STALE`` until the connection is back and the state was reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from aigos.core.delegation import capabilities_of
from aigos.core.policy import Effective, PolicySet, Request, Subject, narrowing
from aigos.server.bus import Bus
from aigos.server.bus.follower import Follower
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.errors import ServiceUnavailable, Unauthenticated
from aigos.server.identity import subjects
from aigos.server.identity.subjects import Attributes
from aigos.server.policy import service
from aigos.server.policy.pieces import freeze, in_pieces
from aigos.server.tenancy import tenants

CHANNEL = "policy"
IDENTITY_CHANNEL = "identity"
MAX_AGENTS = 100_000
#: An agent change is announced before its commit: forget the agent again once it has surely committed.
REFORGET_AFTER_SECONDS = 1.0
#: How long a check waits for its tenant's newer policy set before it is answered from the previous one:
#: a small set is ready well within it, so a change is enforced from the next check on.
FRESH_WITHIN_SECONDS = 1.0


async def compile_in_pieces(version: int, documents: Iterable[Mapping[str, Any]]) -> PolicySet:
    """``PolicySet(version, documents)``, yielding to the event loop between pieces of a few milliseconds."""
    return await in_pieces(PolicySet.in_steps(version, documents), freezing=True)


async def select_in_pieces(
    policies: PolicySet, subject: Subject, action: str, request: Request | None = None
) -> Effective:
    """The policies that apply to ``subject`` with ``action``'s rules worked out, in pieces when new.

    Once both are cached (every check but an agent's first, or an action's first), this is two look-ups
    and ``evaluate`` with the result does no more work than a check of a known action. Given the
    ``request`` (of that action), a resource that is costly to test against the rules it may meet is
    tested first, in pieces too (``aigos.core.policy.narrowing``): the result is then for it alone.
    """
    effective = policies.cached(subject)
    if effective is None:
        effective = await in_pieces(policies.selecting(subject), freezing=True)
    action = action.lower()
    if not effective.knows(action):
        await in_pieces(effective.finding(action), freezing=True)
    if request is not None and effective.costly(request):
        return await in_pieces(narrowing(effective, request))
    return effective


def _retrieve(task: asyncio.Task[PolicySet]) -> None:
    if not task.cancelled():
        task.exception()


class PolicyState(Follower):
    """The replica's compiled policy sets and agent attributes, kept current through the bus."""

    name = "policy-state"

    def __init__(self, database: Database, bus: Bus) -> None:
        super().__init__(bus, CHANNEL, IDENTITY_CHANNEL)
        self.database = database
        self._sets: dict[uuid.UUID, PolicySet] = {}
        #: Tenants that record allowed decisions as per-minute counts (loaded with their policy set).
        self._aggregating: set[uuid.UUID] = set()
        #: The newest version announced per tenant: a cached set older than this is reloaded.
        self._announced: dict[uuid.UUID, int] = {}
        #: The load under way per tenant (read and compile), shared by every check waiting for it.
        self._loading: dict[uuid.UUID, asyncio.Task[PolicySet]] = {}
        self._attributes: dict[uuid.UUID, Attributes] = {}
        #: Subjects by token id, rebuilt when the agent's status or attributes change.
        self._subjects: dict[str, tuple[str, Attributes, Subject]] = {}
        self._stale = False

    # -- hot path ---------------------------------------------------------------------------------

    def ensure_live(self) -> None:
        """Raise 503 ``POLICY_STATE_STALE`` unless bus notifications are flowing and were applied."""
        if not self.live:
            self._stale = True
        if self._stale:
            raise ServiceUnavailable(
                "This server lost its connection to the bus and is reloading policies; retry shortly.",
                code="POLICY_STATE_STALE",
                headers={"Retry-After": "1"},
            )

    async def policy_set(self, tenant_id: uuid.UUID) -> PolicySet:
        """The tenant's compiled policies, loaded from the database when missing or older than announced.

        Loading runs as a task of its own, so a check that gives up waiting (or is cancelled) does not
        waste it; a check with a previous set waits ``FRESH_WITHIN_SECONDS`` at most.
        """
        current = self._sets.get(tenant_id)
        if current is not None and current.version >= self._announced.get(tenant_id, 0):
            return current
        task = self._loader(tenant_id)
        if current is None:
            return await asyncio.shield(task)
        done, _ = await asyncio.wait({task}, timeout=FRESH_WITHIN_SECONDS)
        return task.result() if done else current

    async def policy_set_at_least(self, tenant_id: uuid.UUID, version: int) -> PolicySet:
        """The tenant's compiled policies at ``version`` (read from the database) or newer, waiting for them.

        For a simulation, which must see the saved policies as they stand even on a replica the change's
        announcement has not reached yet; the set is kept for the checks that follow.
        """
        if version > self._announced.get(tenant_id, 0):
            self._announced[tenant_id] = version
        current = self._sets.get(tenant_id)
        # A load that began before the version was committed may bring an older set: load once more.
        for _ in range(2):
            if current is not None and current.version >= version:
                break
            current = await asyncio.shield(self._loader(tenant_id))
        assert current is not None
        return current

    def _loader(self, tenant_id: uuid.UUID) -> asyncio.Task[PolicySet]:
        """The load of the tenant's set under way, or a new one."""
        task = self._loading.get(tenant_id)
        if task is None:
            task = asyncio.create_task(self._load(tenant_id), name=f"policy-set-{tenant_id}")
            # A failure nobody waited for is not worth a warning: the next check loads again and sees it.
            task.add_done_callback(_retrieve)
            self._loading[tenant_id] = task
        return task

    async def _load(self, tenant_id: uuid.UUID) -> PolicySet:
        try:
            loaded = self._sets[tenant_id] = await self.read(tenant_id)
            return loaded
        finally:
            self._loading.pop(tenant_id, None)

    async def read(self, tenant_id: uuid.UUID) -> PolicySet:
        """Read and compile the tenant's current policies (bypassing the cache)."""
        async with self.database.session() as session:
            await set_tenant(session, tenant_id)
            version = await service.set_version(session, tenant_id)
            if await tenants.aggregates_allowed_decisions(session, tenant_id):
                self._aggregating.add(tenant_id)
            else:
                self._aggregating.discard(tenant_id)
            documents: list[dict[str, Any]] = []
            # A batch at a time (decoding 32 MiB of JSON at once would hold the loop for half a second),
            # each frozen as compiling freezes (see ``freeze``): the documents are long-lived too, and a
            # batch is as many objects as several pieces of a compile.
            async for batch in service.document_batches(session, tenant_id):
                documents += batch
                freeze()
                await asyncio.sleep(0)
        return await compile_in_pieces(version, documents)

    def aggregates(self, tenant_id: uuid.UUID) -> bool:
        """Whether the tenant's allowed decisions are recorded as per-minute counts."""
        return tenant_id in self._aggregating

    async def subject(
        self, tenant_id: uuid.UUID, agent_id: uuid.UUID, status: str, claims: dict[str, Any]
    ) -> Subject:
        """The agent as the evaluator sees it: status now, capabilities from its token (cut down to those
        stored now: a narrowing needs no new token), stored attributes."""
        attributes = self._attributes.get(agent_id)
        if attributes is None:
            try:
                attributes = await self._load_attributes(tenant_id, agent_id)
            except LookupError as exc:
                # A valid token of an agent whose record is gone (its tenant was removed): not one of ours.
                raise Unauthenticated("The token's agent no longer exists.", code="INVALID_TOKEN") from exc
        jti = str(claims.get("jti"))
        cached = self._subjects.get(jti)
        if cached is not None and cached[0] == status and cached[1] is attributes:
            return cached[2]
        held = capabilities_of(claims.get("aigos:capabilities") or {})
        subject = Subject.of(
            str(agent_id),
            status=status,
            capabilities=held.narrowed_to(capabilities_of(attributes.capabilities)).to_claim(),
            agent_type=attributes.agent_type,
            owner=attributes.owner,
            deployment_env=attributes.deployment_env,
            metadata={"labels": attributes.labels},
        )
        if len(self._subjects) >= MAX_AGENTS:
            self._subjects.clear()
        self._subjects[jti] = (status, attributes, subject)
        return subject

    async def attributes(self, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> Attributes | None:
        """An agent's targeting attributes (None if it is not in the tenant)."""
        found = self._attributes.get(agent_id)
        if found is not None:
            return found
        try:
            return await self._load_attributes(tenant_id, agent_id)
        except LookupError:
            return None

    async def _load_attributes(self, tenant_id: uuid.UUID, agent_id: uuid.UUID) -> Attributes:
        async with self.database.session() as session:
            await set_tenant(session, tenant_id)
            attributes = await subjects.attributes(session, tenant_id, agent_id)
        if attributes is None:
            raise LookupError(agent_id)
        if len(self._attributes) >= MAX_AGENTS:
            self._attributes.clear()
        self._attributes[agent_id] = attributes
        return attributes

    # -- changes ----------------------------------------------------------------------------------

    async def announce(self, tenant_id: uuid.UUID, version: int) -> None:
        """A tenant's policies changed (call after the commit): every replica reloads them."""
        message = {"type": "policy", "tenant_id": str(tenant_id), "version": version}
        self._apply(message)
        await self.publish(CHANNEL, message)

    async def announce_tenant_changed(self, tenant_id: uuid.UUID) -> None:
        """A tenant's settings changed (call after the commit): every replica reloads its set with them."""
        message = {"type": "tenant", "tenant_id": str(tenant_id)}
        self._apply(message)
        await self.publish(CHANNEL, message)

    def _apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "tenant":
            self._sets.pop(uuid.UUID(str(message["tenant_id"])), None)
        elif kind == "policy":
            tenant_id = uuid.UUID(str(message["tenant_id"]))
            version = int(message["version"])
            if version > self._announced.get(tenant_id, 0):
                self._announced[tenant_id] = version
        elif kind == "agent":
            agent_id = uuid.UUID(str(message["agent_id"]))
            self._forget_agent(agent_id)
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(REFORGET_AFTER_SECONDS, self._forget_agent, agent_id)

    def _forget_agent(self, agent_id: uuid.UUID) -> None:
        self._attributes.pop(agent_id, None)

    def forget_all(self) -> None:
        """Drop every cached set and attribute (after a lost bus connection)."""
        self._sets = {}
        self._attributes = {}
        self._subjects = {}

    # -- following the bus ------------------------------------------------------------------------

    async def load(self) -> None:
        """Nothing to read at start: a tenant's set is read at its first check."""

    async def resync(self) -> None:
        """Announcements may have been missed: drop everything; checks reload what they need."""
        self.forget_all()
        self._stale = False

    async def receive(self, message: dict[str, Any]) -> None:
        """Apply another replica's announcement (policy set, tenant settings, agent attributes)."""
        self._apply(message)
