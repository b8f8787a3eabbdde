"""Kill-switch notices through PostgreSQL: how a trigger reaches the other replicas without the bus.

A trigger sends ``NOTIFY`` in its own transaction, so PostgreSQL delivers the notice when, and only when,
its commands are committed. Every replica ``LISTEN``s on a dedicated connection (a pooled one would not
do: a ``LISTEN`` belongs to its session) and reconnects with backoff when it is lost. Notices sent while a
replica was not listening are gone, so after every (re)connection the replica catches up from the
database, as it does after a bus ``resync``.

A notice names the tenant, the agents (while they fit PostgreSQL's payload limit; else the whole tenant)
and their new status, and carries the signed commands themselves while they fit too (a single agent's
trigger always does). The receiver hands carried commands to its streams at once; otherwise it reads the
named agents' undelivered commands if it holds any of their streams. It applies the status to its identity
state: the bus announcement of that status may have been lost with the triggering replica's Redis
connection while the receiver's is fine.

Redis carries the same commands (the signed commands travel in the message, no database read); this path
is what makes stopping an agent independent of Redis. Both arrive; duplicates are harmless,
since a stream sends each sequence once. Triggers are rare, so a ``NOTIFY`` for each costs nothing that
matters, and sending it always (rather than only when the bus publish failed) also covers the replicas
that lost Redis while the triggering one did not.

The listening connections double as a head count: each server process holds exactly one, so the
``probe`` that keeps watch on the connection also counts the processes of the deployment, which the
per-process rate limits are divided by while Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

log = structlog.get_logger("aigos.killswitch.notices")

CHANNEL = "aigos_killswitch"
#: The ``application_name`` of the listening connections, by which they are counted.
LISTENER_NAME = "aigos-killswitch-listener"
#: PostgreSQL refuses payloads of 8000 bytes or more; past this the notice names the tenant only.
MAX_PAYLOAD = 7900

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")
_COUNT = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1"


@dataclass(frozen=True, slots=True)
class Notice:
    """What a trigger changed: ``agent_ids`` None means every agent of the tenant may have a command."""

    origin: str
    tenant_id: uuid.UUID
    agent_ids: tuple[uuid.UUID, ...] | None
    status: str | None
    #: When the status was set (``time.time()``): an older announcement never overrides a newer one.
    at: float
    #: A fleet command committed or bookkept: receivers read it and apply it (the other fields aside).
    fleet_id: uuid.UUID | None = None
    #: The signed commands (``SignedCommand.to_json``) when they fit; None: read them from the database.
    commands: tuple[dict[str, Any], ...] | None = None

    def encode(self) -> str:
        """The payload, within PostgreSQL's limit: the commands are left out if they do not fit, then the
        agents."""
        body: dict[str, Any] = {"o": self.origin, "t": str(self.tenant_id), "s": self.status, "at": self.at}
        if self.fleet_id is not None:
            body["f"] = str(self.fleet_id)
        if self.agent_ids is not None:
            body["a"] = [str(agent_id) for agent_id in self.agent_ids]
            if self.commands is not None:
                payload = json.dumps({**body, "c": list(self.commands)})
                if len(payload) <= MAX_PAYLOAD:
                    return payload
            payload = json.dumps(body)
            if len(payload) <= MAX_PAYLOAD:
                return payload
            del body["a"]
        return json.dumps(body)

    @classmethod
    def decode(cls, payload: str) -> Notice | None:
        """The notice in ``payload``, or None if it is not one of ours."""
        try:
            body = json.loads(payload)
            agents = body.get("a")
            commands = body.get("c")
            if commands is not None and not (
                isinstance(commands, list) and all(isinstance(command, dict) for command in commands)
            ):
                return None
            return cls(
                origin=str(body["o"]),
                tenant_id=uuid.UUID(str(body["t"])),
                agent_ids=None if agents is None else tuple(uuid.UUID(str(a)) for a in agents),
                status=None if body.get("s") is None else str(body["s"]),
                at=float(body.get("at") or 0.0),
                fleet_id=None if body.get("f") is None else uuid.UUID(str(body["f"])),
                commands=None if commands is None else tuple(commands),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


async def send(
    session: AsyncSession,
    origin: str,
    tenant_id: uuid.UUID,
    agent_ids: Iterable[uuid.UUID],
    status: str,
    commands: Iterable[dict[str, Any]] | None = None,
) -> None:
    """Queue a notice in ``session``'s transaction, delivered at its commit (PostgreSQL only)."""
    if session.bind is None or session.bind.dialect.name != "postgresql":
        return
    carried = None if commands is None else tuple(commands)
    notice = Notice(origin, tenant_id, tuple(agent_ids), status, time.time(), commands=carried)
    await session.execute(_NOTIFY, {"channel": CHANNEL, "payload": notice.encode()})


async def send_fleet(session: AsyncSession, origin: str, tenant_id: uuid.UUID, fleet_id: uuid.UUID) -> None:
    """Queue a notice of the fleet command ``fleet_id`` in ``session``'s transaction (PostgreSQL only)."""
    if session.bind is None or session.bind.dialect.name != "postgresql":
        return
    notice = Notice(origin, tenant_id, None, None, time.time(), fleet_id)
    await session.execute(_NOTIFY, {"channel": CHANNEL, "payload": notice.encode()})


def connect_args(engine: AsyncEngine) -> dict[str, Any]:
    """``asyncpg.connect`` arguments for the database ``engine`` is for (as SQLAlchemy reads its URL)."""
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    return dict(kwargs)


class NoticeListener:
    """One dedicated connection that ``LISTEN``s for notices, reconnecting whenever it is lost.

    ``on_notice`` gets each payload (synchronously: queue it); ``on_connected`` is awaited after every
    (re)connection, once listening, to catch up on what may have been missed. ``probe_seconds`` is how
    often the connection is checked (a peer that vanished without closing it is noticed only this way).
    """

    def __init__(
        self,
        connect: dict[str, Any],
        on_notice: Callable[[str], None],
        on_connected: Callable[[], Awaitable[object]],
        *,
        probe_seconds: float = 2.0,
        timeout: float = 5.0,
        backoff: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        self._connect = connect
        self._on_notice = on_notice
        self._on_connected = on_connected
        self._probe_seconds = probe_seconds
        self._timeout = timeout
        self._backoff = backoff
        self._failing = False
        self._delay = backoff[0]
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        #: Server processes listening on this database, this one included (from the last probe).
        self.replicas = 1

    @property
    def connected(self) -> bool:
        """Whether notices are being heard right now."""
        return self._listening.is_set()

    async def start(self, wait_seconds: float = 5.0) -> None:
        """Start listening; returns once listening, or after ``wait_seconds`` (it keeps trying then)."""
        self._task = asyncio.create_task(self._supervise(), name="killswitch-notices")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                await self._listening.wait()

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _supervise(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever went wrong (refused, lost, a catch-up that failed), the answer is to start over:
                # a new connection, then a catch-up, retried that way until it succeeds.
                if not self._failing:
                    self._failing = True
                    log.warning("killswitch_notices_lost", error=repr(exc))
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, self._backoff[1])

    async def _listen(self) -> None:
        """Connect, listen, catch up, then watch the connection until it is lost."""
        lost = asyncio.Event()
        connection = await asyncpg.connect(
            **self._connect, timeout=self._timeout, server_settings={"application_name": LISTENER_NAME}
        )
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, self._heard)
            self._listening.set()
            await self._on_connected()
            if self._failing:
                self._failing = False
                log.warning("killswitch_notices_listening_again")
            self._delay = self._backoff[0]
            await self._watch(connection, lost)
        finally:
            self._listening.clear()
            connection.terminate()

    async def _watch(self, connection: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Probe the connection (counting the listeners) until it is lost or a probe fails."""
        while not lost.is_set():
            count = await connection.fetchval(_COUNT, LISTENER_NAME, timeout=self._timeout)
            self.replicas = max(1, int(count or 0))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._probe_seconds):
                    await lost.wait()
        raise OSError("the connection was closed")

    def _heard(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self._on_notice(payload)
