"""Kill-switch streams with a real HTTP client: offline and live delivery, resume, PAUSE and RESUME."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aigos.core.commands import (
    CommandRejected,
    FleetCommand,
    ReplayGuard,
    SignedCommand,
    StreamAnchor,
    verify_anchor,
    verify_command,
    verify_fleet_command,
)
from aigos.core.signing import unb64url
from aigos.server.config import Settings
from tests.helpers import TenantHandle
from tests.killswitch.helpers import Live
from tests.killswitch.sse import Event, SseClient


async def public_keys(live: Live) -> dict[str, bytes]:
    response = await live.http.get("/v1/kill-switch/keys")
    assert response.status_code == 200
    return {key["key_id"]: unb64url(key["public_key"]) for key in response.json()["keys"]}


async def agent_status(live: Live, owner: TenantHandle, agent: dict[str, Any]) -> str:
    response = await live.http.get(f"/v1/agents/{agent['agent_id']}", headers=owner.headers)
    status: str = response.json()["status"]
    return status


def command_of(event: Event | None, sequence: int) -> SignedCommand:
    assert event is not None, "the stream ended"
    assert event.event == "kill-switch"
    assert event.id == str(sequence)
    return SignedCommand.from_json(event.json)


async def settled(live: Live, owner: TenantHandle, command_id: str, status: str) -> dict[str, Any]:
    """The command once it reached ``status`` (deliveries are written every half second)."""
    for _ in range(50):
        response = await live.http.get(f"/v1/kill-switch/commands/{command_id}", headers=owner.headers)
        assert response.status_code == 200, response.text
        if response.json()["status"] == status:
            body: dict[str, Any] = response.json()
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"command {command_id} never became {status}: {response.json()}")


def bearer(agent: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent['identity_token']}"}


async def test_pause_resume_round_trip_offline_delivery_and_resume(live: Live) -> None:
    owner = await live.tenant()
    agent = await live.agent(owner, "worker")
    keys = await public_keys(live)
    guard = ReplayGuard()
    sse = SseClient(live.http)
    try:
        # Offline: a PAUSE issued before the agent connects is delivered on connect.
        paused = await live.trigger(owner, agent=agent, command="PAUSE", reason="maintenance")
        assert paused.status_code == 201, paused.text
        body = paused.json()
        assert body["status"] == "pending"
        assert [c["agent_id"] for c in body["commands"]] == [agent["agent_id"]]
        assert await agent_status(live, owner, agent) == "paused"

        # A paused agent's token still opens the stream.
        stream = await sse.open(agent["identity_token"])
        pause = command_of(await stream.next(), 1)
        verify_command(keys, pause, agent_id=agent["agent_id"])
        guard.check(pause)
        guard.accept(pause)
        assert (pause.command, pause.reason) == ("PAUSE", "maintenance")
        assert pause.command_id == body["command_id"]
        assert pause.tenant_id == owner.id
        assert pause.issued_at.endswith("Z")

        # Live: RESUME arrives on the open stream; keep-alive comments flow in between.
        await stream.wait_comment("keep-alive")
        resumed = await live.trigger(owner, agent=agent, command="RESUME")
        assert resumed.status_code == 201, resumed.text
        resume = command_of(await stream.next(), 2)
        verify_command(keys, resume, agent_id=agent["agent_id"])
        guard.check(resume)
        guard.accept(resume)
        assert resume.command == "RESUME"
        assert await agent_status(live, owner, agent) == "active"
        # Replaying the first command is detected by the agent.
        assert guard.highest(agent["agent_id"]) == 2

        ack = await live.http.post(
            f"/v1/kill-switch/commands/{resume.command_id}/ack",
            json={"outcome": "resumed", "detail": "back to work"},
            headers=bearer(agent),
        )
        assert ack.status_code == 200, ack.text
        assert ack.json()["status"] == "acknowledged"
        assert ack.json()["ack_outcome"] == "resumed"

        # Reconnecting: unacknowledged commands after Last-Event-ID come again, acknowledged ones do not.
        again = await sse.open(agent["identity_token"], last_event_id=0)
        assert command_of(await again.next(), 1).command_id == pause.command_id
        third = await live.trigger(owner, agent=agent, command="PAUSE")
        assert third.status_code == 201
        # Sequence 2 was acknowledged: the next one is 3.
        assert command_of(await again.next(), 3).command == "PAUSE"
        # Delivery is recorded (in batches) with its time.
        delivered = await settled(live, owner, pause.command_id, "delivered")
        assert delivered["delivered_at"] is not None
        assert delivered["acknowledged_at"] is None
        resumed_after = await sse.open(agent["identity_token"], last_event_id=3)
        with pytest.raises(TimeoutError):
            await resumed_after.next(within=0.8)
    finally:
        await sse.aclose()


async def test_a_stream_opens_with_the_signed_highest_acknowledged_sequence(live: Live) -> None:
    owner = await live.tenant()
    agent = await live.agent(owner, "restarts")
    keys = await public_keys(live)
    sse = SseClient(live.http)
    try:
        for command in ("PAUSE", "RESUME", "PAUSE"):
            assert (await live.trigger(owner, agent=agent, command=command)).status_code == 201
        first = await sse.open(agent["identity_token"])
        assert first.opened is not None
        anchor = StreamAnchor.from_json(first.opened)
        verify_anchor(keys, anchor, agent_id=agent["agent_id"])
        assert (anchor.agent_id, anchor.tenant_id, anchor.acknowledged) == (agent["agent_id"], owner.id, 0)
        commands = [command_of(await first.next(), sequence) for sequence in (1, 2, 3)]
        for command, outcome in zip(commands[:2], ("paused", "resumed"), strict=True):
            ack = await live.http.post(
                f"/v1/kill-switch/commands/{command.command_id}/ack",
                json={"outcome": outcome},
                headers=bearer(agent),
            )
            assert ack.status_code == 200, ack.text

        # A restarted agent remembers nothing; the anchor tells it that sequence 2 was obeyed already, so
        # a replay of the old, unexpired PAUSE 1 or RESUME 2 is refused, and the pending PAUSE 3 is not.
        second = await sse.open(agent["identity_token"])
        assert second.opened is not None
        anchor = StreamAnchor.from_json(second.opened)
        verify_anchor(keys, anchor, agent_id=agent["agent_id"])
        assert anchor.acknowledged == 2
        guard = ReplayGuard()
        guard.anchor(anchor)
        for old in commands[:2]:
            with pytest.raises(CommandRejected) as refused:
                guard.check(old)
            assert refused.value.code == "OUT_OF_ORDER"
        guard.check(commands[2])

        # The anchor is signed: a lowered one does not verify.
        forged = StreamAnchor.from_json({**second.opened, "acknowledged": 0})
        with pytest.raises(CommandRejected) as bad:
            verify_anchor(keys, forged, agent_id=agent["agent_id"])
        assert bad.value.code == "BAD_SIGNATURE"
    finally:
        await sse.aclose()


def fleet_command_of(event: Event | None) -> FleetCommand:
    assert event is not None, "the stream ended"
    assert event.event == "kill-switch-fleet"
    assert event.id is None  # Last-Event-ID stays the agent's own sequence
    return FleetCommand.from_json(event.json)


async def test_cascading_terminate_reaches_every_descendant_and_closes_their_streams(live: Live) -> None:
    owner = await live.tenant()
    root = await live.agent(owner, "root")
    child = await live.agent(owner, "child", parent=root)
    grandchild = await live.agent(owner, "grandchild", parent=child)
    bystander = await live.agent(owner, "bystander")
    keys = await public_keys(live)
    sse = SseClient(live.http)
    try:
        # Root and grandchild are online; the child is offline.
        root_stream = await sse.open(root["identity_token"])
        grandchild_stream = await sse.open(grandchild["identity_token"])
        bystander_stream = await sse.open(bystander["identity_token"])
        triggered = await live.trigger(owner, agent=root, command="TERMINATE", reason="rogue")
        assert triggered.status_code == 201, triggered.text
        body = triggered.json()
        # One fleet command for the lineage, not one per agent.
        assert (body["fleet"], body["commands"]) == (True, [])

        for stream, agent in ((root_stream, root), (grandchild_stream, grandchild)):
            anchor = StreamAnchor.from_json(stream.opened)
            verify_anchor(keys, anchor, agent_id=agent["agent_id"])
            command = fleet_command_of(await stream.next())
            verify_fleet_command(
                keys,
                command,
                tenant_id=anchor.tenant_id,
                agent_id=agent["agent_id"],
                ancestors=anchor.ancestors,
            )
            assert (command.command, command.command_id) == ("TERMINATE", body["command_id"])
            # The stream closes after a TERMINATE.
            assert await stream.next() is None
        # The grandchild knows its lineage from its signed anchor, parent first.
        assert StreamAnchor.from_json(grandchild_stream.opened).ancestors == (
            child["agent_id"],
            root["agent_id"],
        )
        # An agent outside the lineage hears nothing of it: its next event is its own PAUSE.
        paused = await live.trigger(owner, agent=bystander, command="PAUSE")
        assert paused.status_code == 201, paused.text
        assert command_of(await bystander_stream.next(), 1).command == "PAUSE"

        # The statuses follow in the background; then terminated agents' tokens are refused elsewhere.
        for _ in range(200):
            if await agent_status(live, owner, child) == "terminated":
                break
            await asyncio.sleep(0.05)
        for agent in (root, child, grandchild):
            assert await agent_status(live, owner, agent) == "terminated"
        assert await agent_status(live, owner, bystander) == "paused"
        beat = await live.http.post(f"/v1/agents/{child['agent_id']}/heartbeat", headers=bearer(child))
        assert beat.status_code == 401
        assert beat.json()["code"] == "AGENT_TERMINATED"

        # RESUME of a terminated agent: 409 for the agent itself.
        refused = await live.trigger(owner, agent=root, command="RESUME")
        assert refused.status_code == 409
        assert refused.json()["code"] == "INVALID_STATUS_TRANSITION"
    finally:
        await sse.aclose()


async def test_a_new_stream_past_the_per_agent_bound_ends_the_oldest(live: Live, settings: Settings) -> None:
    owner = await live.tenant()
    agent = await live.agent(owner, "many-streams")
    other = await live.agent(owner, "other")
    bound = settings.killswitch_max_streams_per_agent
    sse = SseClient(live.http)
    try:
        others = [await sse.open(other["identity_token"]) for _ in range(bound)]
        streams = [await sse.open(agent["identity_token"]) for _ in range(bound + 1)]
        # The oldest stream of the agent was ended; the newest `bound` streams stay open.
        assert await streams[0].next() is None
        paused = await live.trigger(owner, agent=agent, command="PAUSE")
        assert paused.status_code == 201, paused.text
        for stream in streams[1:]:
            assert command_of(await stream.next(), 1).command == "PAUSE"
        # Another agent's streams count on their own: all of them are still open.
        stopped = await live.trigger(owner, agent=other, command="PAUSE")
        assert stopped.status_code == 201, stopped.text
        for stream in others:
            assert command_of(await stream.next(), 1).command == "PAUSE"
    finally:
        await sse.aclose()
