"""The kill-switch API on both backends: trigger, list, get, acknowledge, validation and isolation."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from httpx import AsyncClient

from tests.helpers import TenantHandle


async def register(
    client: AsyncClient, owner: TenantHandle, name: str, parent: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name}
    if parent is not None:
        body["parent_id"] = parent["agent_id"]
    response = await client.post("/v1/agents/register", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text
    agent: dict[str, Any] = response.json()
    return agent


async def trigger(client: AsyncClient, owner: TenantHandle, **body: Any) -> Any:
    body.setdefault("reason", "test")
    return await client.post("/v1/kill-switch/trigger", json=body, headers=owner.headers)


def bearer(agent: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent['identity_token']}"}


async def status_of(client: AsyncClient, owner: TenantHandle, agent: dict[str, Any]) -> str:
    response = await client.get(f"/v1/agents/{agent['agent_id']}", headers=owner.headers)
    value: str = response.json()["status"]
    return value


async def bookkept(client: AsyncClient, owner: TenantHandle, command_id: str) -> dict[str, Any]:
    """The fleet command once its bookkeeping (run after the trigger's answer) is done."""
    for _ in range(600):
        got = await client.get(f"/v1/kill-switch/fleet-commands/{command_id}", headers=owner.headers)
        assert got.status_code == 200, got.text
        if got.json()["bookkeeping_done_at"] is not None:
            found: dict[str, Any] = got.json()
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"the bookkeeping of {command_id} never finished")


async def test_trigger_list_get_ack_and_events(client: AsyncClient, tenant_a: TenantHandle) -> None:
    root = await register(client, tenant_a, "root")
    child = await register(client, tenant_a, "child", parent=root)
    grandchild = await register(client, tenant_a, "grandchild", parent=child)
    other = await register(client, tenant_a, "other")

    # PAUSE without cascade: the root only, with a command of its own.
    alone = await trigger(client, tenant_a, agent_id=root["agent_id"], command="PAUSE", cascade=False)
    assert alone.status_code == 201, alone.text
    assert alone.json()["fleet"] is False
    assert [c["agent_id"] for c in alone.json()["commands"]] == [root["agent_id"]]
    assert await status_of(client, tenant_a, root) == "paused"
    assert await status_of(client, tenant_a, child) == "active"

    # Terminate the grandchild (no descendants: a command of its own), then RESUME the tree: one fleet
    # command for the lineage; its bookkeeping skips the terminated member and counts it.
    leaf = await trigger(client, tenant_a, agent_id=grandchild["agent_id"])
    assert leaf.status_code == 201
    assert leaf.json()["fleet"] is False
    resumed = await trigger(client, tenant_a, agent_id=root["agent_id"], command="RESUME")
    assert resumed.status_code == 201, resumed.text
    body = resumed.json()
    assert body["fleet"] is True
    assert body["scope"] == {"kind": "lineage", "root_agent_id": root["agent_id"]}
    assert (body["commands"], body["sequence"]) == ([], 1)
    done = await bookkept(client, tenant_a, body["command_id"])
    assert (done["targeted"], done["skipped"], done["pending"]) == (2, 1, 2)
    assert await status_of(client, tenant_a, root) == "active"

    # Tenant-wide PAUSE: one fleet command; every agent that can still act is paused in the background.
    everyone = await trigger(client, tenant_a, all_agents=True, command="PAUSE", reason="incident")
    assert everyone.status_code == 201, everyone.text
    fleet_id = everyone.json()["command_id"]
    assert everyone.json()["scope"] == {"kind": "tenant", "root_agent_id": None}
    done = await bookkept(client, tenant_a, fleet_id)
    assert done["targeted"] == 3
    assert done["active"] is True
    for agent in (root, child, other):
        assert await status_of(client, tenant_a, agent) == "paused"

    listed = await client.get("/v1/kill-switch/commands?limit=100", headers=tenant_a.headers)
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == 2
    fleets = await client.get("/v1/kill-switch/fleet-commands", headers=tenant_a.headers)
    assert [c["sequence"] for c in fleets.json()["commands"]] == [2, 1]

    command_id = alone.json()["command_id"]
    got = await client.get(f"/v1/kill-switch/commands/{command_id}", headers=tenant_a.headers)
    assert got.status_code == 200
    command = got.json()
    assert (command["command"], command["status"], command["delivered_at"]) == ("PAUSE", "pending", None)

    # Only the command's own agent may acknowledge it.
    wrong = await client.post(
        f"/v1/kill-switch/commands/{command_id}/ack", json={"outcome": "paused"}, headers=bearer(child)
    )
    assert wrong.status_code == 404
    assert wrong.json()["code"] == "COMMAND_NOT_FOUND"
    bad = await client.post(
        f"/v1/kill-switch/commands/{command_id}/ack", json={"outcome": "exploded"}, headers=bearer(root)
    )
    assert bad.status_code == 400
    ack = await client.post(
        f"/v1/kill-switch/commands/{command_id}/ack",
        json={"outcome": "paused", "detail": "stopped at step 3"},
        headers=bearer(root),
    )
    assert ack.status_code == 200, ack.text
    acked = ack.json()
    assert acked["status"] == "acknowledged"
    assert acked["ack_detail"] == "stopped at step 3"
    assert acked["acknowledged_at"] is not None
    assert acked["delivered_at"] is not None
    # An admin key is not an agent token.
    assert (
        await client.post(
            f"/v1/kill-switch/commands/{command_id}/ack", json={"outcome": "paused"}, headers=tenant_a.headers
        )
    ).status_code == 401

    # A fleet command is acknowledged per agent, on the same route; only agents of its scope may.
    fleet_ack = await client.post(
        f"/v1/kill-switch/commands/{fleet_id}/ack", json={"outcome": "paused"}, headers=bearer(child)
    )
    assert fleet_ack.status_code == 200, fleet_ack.text
    assert fleet_ack.json()["fleet"] is True
    assert (fleet_ack.json()["agent_id"], fleet_ack.json()["status"]) == (child["agent_id"], "acknowledged")
    outside = await client.post(
        f"/v1/kill-switch/commands/{body['command_id']}/ack",
        json={"outcome": "resumed"},
        headers=bearer(other),
    )
    assert outside.status_code == 404
    counted = (
        await client.get(f"/v1/kill-switch/fleet-commands/{fleet_id}", headers=tenant_a.headers)
    ).json()
    assert (counted["pending"], counted["acknowledged"]) == (2, 1)

    events = await client.get("/v1/audit/events?limit=100", headers=tenant_a.headers)
    assert events.status_code == 200, events.text
    types = [entry["event_type"] for entry in events.json()["data"]]
    assert types.count("kill_switch.triggered") == 4
    assert types.count("kill_switch.acknowledged") == 2
    assert {"agent.paused", "agent.terminated", "agent.resumed"} <= set(types)


async def test_a_fleet_halt_wins_until_a_fleet_resume_lifts_it(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    root = await register(client, tenant_a, "root")
    child = await register(client, tenant_a, "child", parent=root)
    paused = await trigger(client, tenant_a, all_agents=True, command="PAUSE")
    await bookkept(client, tenant_a, paused.json()["command_id"])
    # Narrower RESUMEs would contradict the tenant's halt: refused, and nothing changes.
    for spec in ({"agent_id": child["agent_id"], "cascade": False}, {"agent_id": root["agent_id"]}):
        refused = await trigger(client, tenant_a, command="RESUME", **spec)
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "FLEET_HALT_ACTIVE"
    # Stopping one agent further is fine.
    assert (
        await trigger(client, tenant_a, agent_id=child["agent_id"], command="TERMINATE")
    ).status_code == 201
    resumed = await trigger(client, tenant_a, all_agents=True, command="RESUME")
    assert resumed.status_code == 201, resumed.text
    done = await bookkept(client, tenant_a, resumed.json()["command_id"])
    assert (done["targeted"], done["skipped"]) == (1, 0)
    lifted = (
        await client.get(
            f"/v1/kill-switch/fleet-commands/{paused.json()['command_id']}", headers=tenant_a.headers
        )
    ).json()
    assert (lifted["active"], lifted["lifted_by"]) == (False, resumed.json()["command_id"])
    assert await status_of(client, tenant_a, root) == "active"
    assert await status_of(client, tenant_a, child) == "terminated"


async def test_validation_and_refusals(client: AsyncClient, tenant_a: TenantHandle) -> None:
    agent = await register(client, tenant_a, "agent")
    unknown = await trigger(client, tenant_a, agent_id=str(uuid.uuid4()))
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "AGENT_NOT_FOUND"
    for body in (
        {"agent_id": agent["agent_id"], "command": "EXPLODE"},
        {"agent_id": agent["agent_id"], "reason": ""},
        {"agent_id": "not-a-uuid"},
        {},
        {"agent_id": agent["agent_id"], "all_agents": True},
    ):
        response = await trigger(client, tenant_a, **body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] == "VALIDATION_FAILED"
    no_reason = await client.post(
        "/v1/kill-switch/trigger", json={"agent_id": agent["agent_id"]}, headers=tenant_a.headers
    )
    assert no_reason.status_code == 400
    assert (
        await client.post("/v1/kill-switch/trigger", json={"agent_id": agent["agent_id"]})
    ).status_code == 401
    # A key without the scope.
    created = await client.post(
        "/v1/api-keys", json={"name": "reader", "scopes": ["agents:read"]}, headers=tenant_a.headers
    )
    assert created.status_code == 201, created.text
    reader = {"Authorization": f"Bearer {created.json()['key']}"}
    forbidden = await client.post(
        "/v1/kill-switch/trigger", json={"agent_id": agent["agent_id"], "reason": "x"}, headers=reader
    )
    assert forbidden.status_code == 403
    assert (await client.get("/v1/kill-switch/commands", headers=reader)).status_code == 200
    missing = await client.get(f"/v1/kill-switch/commands/{uuid.uuid4()}", headers=tenant_a.headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "COMMAND_NOT_FOUND"
    assert (await trigger(client, tenant_a, agent_id=agent["agent_id"])).status_code == 201
    bad_resume = await trigger(client, tenant_a, agent_id=agent["agent_id"], command="RESUME")
    assert bad_resume.status_code == 409
    assert bad_resume.json()["code"] == "INVALID_STATUS_TRANSITION"
    bad_id = await client.get("/v1/kill-switch/stream", headers={**bearer(agent), "Last-Event-ID": "abc"})
    assert bad_id.status_code == 400
    assert bad_id.json()["code"] == "INVALID_LAST_EVENT_ID"
    keys = await client.get("/v1/kill-switch/keys")
    assert keys.status_code == 200
    (key,) = keys.json()["keys"]
    assert key["alg"] == "Ed25519"


async def test_tenants_cannot_reach_each_others_commands(
    client: AsyncClient, tenant_a: TenantHandle, tenant_b: TenantHandle
) -> None:
    theirs = await register(client, tenant_b, "theirs")
    ours = await register(client, tenant_a, "ours")
    # A's key cannot trigger B's agent.
    refused = await trigger(client, tenant_a, agent_id=theirs["agent_id"])
    assert refused.status_code == 404
    assert refused.json()["code"] == "AGENT_NOT_FOUND"
    assert await status_of(client, tenant_b, theirs) == "active"
    # B's command is invisible to A, and to A's agents.
    issued = await trigger(client, tenant_b, agent_id=theirs["agent_id"], command="PAUSE")
    command_id = issued.json()["command_id"]
    assert (
        await client.get(f"/v1/kill-switch/commands/{command_id}", headers=tenant_a.headers)
    ).status_code == 404
    assert (await client.get("/v1/kill-switch/commands", headers=tenant_a.headers)).json()["total"] == 0
    ack = await client.post(
        f"/v1/kill-switch/commands/{command_id}/ack", json={"outcome": "paused"}, headers=bearer(ours)
    )
    assert ack.status_code == 404
    # A tenant-wide trigger of A touches none of B's agents.
    killed = await trigger(client, tenant_a, all_agents=True, command="TERMINATE")
    await bookkept(client, tenant_a, killed.json()["command_id"])
    assert await status_of(client, tenant_b, theirs) == "paused"
    invisible = await client.get(
        f"/v1/kill-switch/fleet-commands/{killed.json()['command_id']}", headers=tenant_b.headers
    )
    assert invisible.status_code == 404
    assert await status_of(client, tenant_a, ours) == "terminated"


async def test_concurrent_triggers_are_serialised(client: AsyncClient, tenant_a: TenantHandle) -> None:
    parent = await register(client, tenant_a, "parent")
    await register(client, tenant_a, "child", parent=parent)
    bodies = [
        {"agent_id": parent["agent_id"], "command": command, "reason": "race"}
        for command in ("PAUSE", "RESUME", "PAUSE", "RESUME", "PAUSE")
    ] + [{"all_agents": True, "command": "PAUSE", "reason": "race"}]
    responses = await asyncio.gather(
        *(client.post("/v1/kill-switch/trigger", json=body, headers=tenant_a.headers) for body in bodies)
    )
    assert {response.status_code for response in responses} <= {201, 409}, [r.text for r in responses]
    # The parent has a child: each trigger is a fleet command, numbered without gaps or repeats.
    listed = await client.get(
        "/v1/kill-switch/fleet-commands", params={"limit": 100}, headers=tenant_a.headers
    )
    sequences = [command["sequence"] for command in listed.json()["commands"]]
    assert sorted(sequences) == list(range(1, len(sequences) + 1))
    assert len(sequences) == sum(response.status_code == 201 for response in responses)


async def test_last_event_id_beyond_any_sequence_is_a_bad_request(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    agent = await register(client, tenant_a, "agent")
    # Sequences are 64-bit: the first value is one past them, the others are not numbers at all.
    values: list[str | bytes] = [
        "11111111111111111111",
        "9223372036854775808",
        "-1",
        "1e3",
        "\u00b2".encode("latin-1"),
    ]
    for value in values:
        refused = await client.get(
            "/v1/kill-switch/stream", headers={**bearer(agent), "Last-Event-ID": value}
        )
        assert refused.status_code == 400, (value, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "INVALID_LAST_EVENT_ID"


async def test_each_command_accepts_only_its_own_outcomes(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    agent = await register(client, tenant_a, "worker")
    paused = await trigger(client, tenant_a, agent_id=agent["agent_id"], command="PAUSE", cascade=False)
    command_id = paused.json()["command_id"]
    url = f"/v1/kill-switch/commands/{command_id}/ack"

    # A PAUSE cannot have terminated the agent: refused, and the command stays unacknowledged.
    for outcome in ("terminated", "resumed"):
        refused = await client.post(url, json={"outcome": outcome}, headers=bearer(agent))
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "OUTCOME_NOT_FOR_COMMAND"
        assert refused.json()["allowed"] == ["failed", "paused", "rejected"]
    got = await client.get(f"/v1/kill-switch/commands/{command_id}", headers=tenant_a.headers)
    assert got.json()["status"] == "pending"
    assert got.json()["ack_outcome"] is None

    accepted = await client.post(url, json={"outcome": "paused"}, headers=bearer(agent))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["ack_outcome"] == "paused"

    # A TERMINATE is never "paused"; refusing it is always possible.
    terminated = await trigger(client, tenant_a, agent_id=agent["agent_id"], command="TERMINATE")
    url = f"/v1/kill-switch/commands/{terminated.json()['command_id']}/ack"
    wrong = await client.post(url, json={"outcome": "paused"}, headers=bearer(agent))
    assert wrong.status_code == 422
    assert wrong.json()["code"] == "OUTCOME_NOT_FOR_COMMAND"
    refused_command = await client.post(url, json={"outcome": "rejected"}, headers=bearer(agent))
    assert refused_command.status_code == 200, refused_command.text
    assert refused_command.json()["ack_outcome"] == "rejected"
