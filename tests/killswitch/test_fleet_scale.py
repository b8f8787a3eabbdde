"""A fleet larger than one statement's bind parameters (asyncpg and SQLite refuse more than 32,767): the
bookkeeping moves every agent and records every delivery, on both backends, instead of failing the same
way at every retry."""

from __future__ import annotations

import uuid

from sqlalchemy import func, insert, select

from aigos.server.db.database import set_tenant
from aigos.server.db.types import utcnow
from aigos.server.identity.models import Agent
from aigos.server.killswitch import fleet
from aigos.server.killswitch.models import FleetDelivery
from tests.killswitch.helpers import Live
from tests.killswitch.test_fleet import until

#: Past 32,767 / 5, the bind parameters of one multi-row delivery insert.
AGENTS = 9_000


async def test_a_tenant_pause_reaches_a_fleet_larger_than_one_statement(live: Live) -> None:
    owner = await live.tenant()
    tenant_id = uuid.UUID(owner.id)
    database = live.app.state.runtime.database
    now = utcnow()
    ids = [uuid.uuid4() for _ in range(AGENTS)]
    async with database.session() as session:
        await set_tenant(session, tenant_id)
        rows = [
            {"id": i, "tenant_id": tenant_id, "name": f"a{n}", "created_at": now} for n, i in enumerate(ids)
        ]
        await session.execute(insert(Agent), rows)

    response = await live.trigger(owner, all_agents=True, command="PAUSE")
    assert response.status_code == 201, response.text
    command_id = response.json()["command_id"]
    done = await until(live, owner, command_id, lambda b: b["bookkeeping_done_at"] is not None)
    assert done["targeted"] == AGENTS

    async with database.session() as session:
        await set_tenant(session, tenant_id)
        statuses = dict(
            (await session.execute(select(Agent.status, func.count()).group_by(Agent.status))).all()
        )
        assert statuses == {"paused": AGENTS}
        # Delivered to every agent at once, as a replica's flush after a fan-out to as many streams would.
        await fleet.record_deliveries(
            session, tenant_id, [(uuid.UUID(command_id), agent_id, now) for agent_id in ids]
        )
    async with database.session() as session:
        await set_tenant(session, tenant_id)
        delivered = await session.scalar(
            select(func.count()).where(
                FleetDelivery.fleet_command_id == uuid.UUID(command_id), FleetDelivery.status == "delivered"
            )
        )
    assert delivered == AGENTS
