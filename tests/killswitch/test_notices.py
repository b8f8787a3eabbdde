"""Kill-switch notices through PostgreSQL: sent at commit, heard by a listener that survives a lost
connection (catching up after each reconnection), and the listeners counted as the deployment's processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from aigos.server.db import Database
from aigos.server.killswitch import notices
from aigos.server.killswitch.notices import MAX_PAYLOAD, Notice, NoticeListener
from tests.bus.helpers import eventually as until
from tests.conftest import pg_url
from tests.tcp_proxy import TcpProxy


class Heard:
    """What a listener reported: payloads and (re)connections."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.connections = 0

    def notice(self, payload: str) -> None:
        self.payloads.append(payload)

    async def connected(self) -> None:
        self.connections += 1


@pytest.fixture
async def database(pg_database: str) -> AsyncIterator[Database]:
    """The test's PostgreSQL database, direct."""
    opened = Database(pg_url(pg_database))
    yield opened
    await opened.dispose()


def test_a_notice_names_its_agents_while_they_fit_and_the_whole_tenant_past_that() -> None:
    tenant = uuid.uuid4()
    few = Notice("me", tenant, (uuid.uuid4(), uuid.uuid4()), "terminated", 1.5)
    assert Notice.decode(few.encode()) == few
    many = Notice("me", tenant, tuple(uuid.uuid4() for _ in range(500)), "paused", 2.0)
    payload = many.encode()
    assert len(payload) <= MAX_PAYLOAD
    decoded = Notice.decode(payload)
    assert decoded is not None
    assert (decoded.tenant_id, decoded.agent_ids, decoded.status) == (tenant, None, "paused")
    for garbage in ("", "[]", '{"o": "x"}', '{"o": "x", "t": "not-a-uuid"}'):
        assert Notice.decode(garbage) is None


def test_a_notice_carries_its_commands_while_they_fit_then_only_the_agents() -> None:
    tenant, agent = uuid.uuid4(), uuid.uuid4()
    command = {"command_id": str(uuid.uuid4()), "agent_id": str(agent), "signature": "s" * 200}
    one = Notice("me", tenant, (agent,), "terminated", 1.5, commands=(command,))
    assert Notice.decode(one.encode()) == one
    agents = tuple(uuid.uuid4() for _ in range(40))
    too_many = Notice("me", tenant, agents, "paused", 2.0, commands=(command,) * 40)
    payload = too_many.encode()
    assert len(payload) <= MAX_PAYLOAD
    decoded = Notice.decode(payload)
    assert decoded is not None
    # The receiver reads the commands from the database instead.
    assert (decoded.agent_ids, decoded.commands) == (agents, None)
    assert Notice.decode(json.dumps({"o": "x", "t": str(tenant), "a": [], "c": [1]})) is None


async def test_heard_at_commit_never_for_a_rollback(database: Database, pg_database: str) -> None:
    heard = Heard()
    listener = NoticeListener(notices.connect_args(database.engine), heard.notice, heard.connected)
    await listener.start()
    try:
        assert listener.connected
        assert heard.connections == 1
        tenant, agent = uuid.uuid4(), uuid.uuid4()
        with pytest.raises(RuntimeError):
            async with database.session() as session:
                await notices.send(session, "origin", tenant, [agent], "terminated")
                raise RuntimeError("rolled back")
        async with database.session() as session:
            await notices.send(session, "origin", tenant, [agent], "paused")
        await until(lambda: len(heard.payloads) == 1)
        notice = Notice.decode(heard.payloads[0])
        assert notice is not None
        assert (notice.tenant_id, notice.agent_ids, notice.status) == (tenant, (agent,), "paused")
    finally:
        await listener.stop()


async def test_listening_again_after_the_connection_is_lost(database: Database, pg_database: str) -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    args = {**notices.connect_args(database.engine), "host": "127.0.0.1", "port": proxy.port}
    heard, other = Heard(), Heard()
    listener = NoticeListener(args, heard.notice, heard.connected, probe_seconds=0.1, backoff=(0.05, 0.2))
    direct = NoticeListener(notices.connect_args(database.engine), other.notice, other.connected)
    await listener.start()
    try:
        assert listener.replicas == 1
        # Each process holds one listener: a second one is counted at the next probe.
        await direct.start()
        await until(lambda: listener.replicas == 2)

        proxy.sever()
        await until(lambda: not listener.connected)
        async with database.session() as session:
            await notices.send(session, "origin", uuid.uuid4(), [uuid.uuid4()], "terminated")
        await until(lambda: len(other.payloads) == 1)
        proxy.restore()
        # Back: it listens again and catches up (the notice sent meanwhile is gone, the commands are not).
        await until(lambda: listener.connected and heard.connections == 2)
        assert heard.payloads == []
        async with database.session() as session:
            await notices.send(session, "origin", uuid.uuid4(), [uuid.uuid4()], "paused")
        await until(lambda: len(heard.payloads) == 1)
    finally:
        await listener.stop()
        await direct.stop()
        await proxy.stop()


async def test_a_listener_that_cannot_connect_keeps_trying(database: Database) -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    proxy.sever()
    args = {**notices.connect_args(database.engine), "host": "127.0.0.1", "port": proxy.port}
    heard = Heard()
    listener = NoticeListener(args, heard.notice, heard.connected, backoff=(0.05, 0.2))
    try:
        await listener.start(wait_seconds=0.2)
        assert not listener.connected
        proxy.restore()
        await until(lambda: listener.connected and heard.connections == 1)
    finally:
        await listener.stop()
        await proxy.stop()
