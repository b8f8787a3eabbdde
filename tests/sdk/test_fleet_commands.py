"""Fleet commands in the SDK: verified before they are obeyed (signature, tenant, scope, expiry, order),
obeyed and acknowledged once by each agent they cover, and ignored and reported (warning, acknowledged as
rejected) when forged, another tenant's, or for a lineage the agent is not in; with both listeners."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aigos.core.commands import (
    CommandRejected,
    FleetCommand,
    lineage_scope,
    sign_anchor,
    sign_fleet_command,
    tenant_scope,
)
from aigos.core.signing import Signer
from aigos.sdk import AigosClient, AsyncAigosClient, KillSwitchCommand
from aigos.sdk.control import PAUSED, RUNNING
from aigos.sdk.killswitch import CommandProcessor
from aigos.sdk.sse import SseEvent
from aigos.server.killswitch.service import command_signer
from tests.conftest import SECRET_KEY
from tests.sdk.live import LiveServer

TENANT = "11111111-1111-4111-8111-111111111111"
PARENT = "22222222-2222-4222-8222-222222222222"
AGENT = "33333333-3333-4333-8333-333333333333"
#: The live test servers' kill-switch key: derived from the secret they are started with.
SERVER_KEY = command_signer(SECRET_KEY.encode())


def fleet_event(signer: Signer, sequence: int, **overrides: Any) -> SseEvent:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "command_id": str(uuid.uuid4()),
        "tenant_id": TENANT,
        "scope": tenant_scope(),
        "command": "PAUSE",
        "reason": "test",
        "issued_at": now,
        "expires_at": now + timedelta(minutes=5),
        "nonce": f"n{sequence}",
        "sequence": sequence,
        **overrides,
    }
    return SseEvent(None, "kill-switch-fleet", json.dumps(sign_fleet_command(signer, **fields).to_json()))


def forged(event: SseEvent, **changes: Any) -> SseEvent:
    data = json.loads(event.data)
    data.update(changes)
    return SseEvent(None, event.event, json.dumps(data))


def test_fleet_commands_are_verified_before_they_are_obeyed() -> None:
    server, stranger = Signer.from_seed(b"\x01" * 32), Signer.from_seed(b"\x02" * 32)
    processor = CommandProcessor(AGENT)
    processor.keys = {server.key_id: server.public_key}

    def outcome(event: SseEvent) -> str:
        parsed = processor.parse_fleet(event)
        if not isinstance(parsed, FleetCommand):
            return "MALFORMED"
        try:
            processor.verify_fleet(parsed)
        except CommandRejected as exc:
            return exc.code
        processor.accept_fleet(parsed)
        return "OK"

    # Before an anchor told it its tenant, nothing is ours.
    assert outcome(fleet_event(server, 1)) == "WRONG_TENANT"
    anchor = sign_anchor(
        server,
        tenant_id=TENANT,
        agent_id=AGENT,
        acknowledged=0,
        issued_at=datetime.now(UTC),
        ancestors=(PARENT,),
    )
    processor.anchor(anchor)
    first = fleet_event(server, 1)
    assert outcome(first) == "OK"
    assert outcome(first) == "REPLAYED"
    assert outcome(fleet_event(server, 2, scope=lineage_scope(PARENT))) == "OK"
    assert outcome(fleet_event(server, 3, scope=lineage_scope(AGENT), command="RESUME")) == "OK"
    assert outcome(fleet_event(server, 3, scope=lineage_scope(AGENT))) == "OUT_OF_ORDER"
    assert outcome(fleet_event(server, 4, scope=lineage_scope(str(uuid.uuid4())))) == "NOT_IN_SCOPE"
    assert outcome(fleet_event(server, 5, tenant_id=str(uuid.uuid4()))) == "WRONG_TENANT"
    assert outcome(fleet_event(stranger, 6)) == "UNKNOWN_KEY"
    # The signature covers the scope and the tenant: widening either breaks it.
    narrow = fleet_event(server, 7, scope=lineage_scope(str(uuid.uuid4())))
    assert outcome(forged(narrow, scope=tenant_scope())) == "BAD_SIGNATURE"
    assert outcome(forged(fleet_event(server, 8), command="RESUME")) == "BAD_SIGNATURE"
    past = datetime.now(UTC) - timedelta(minutes=10)
    assert (
        outcome(fleet_event(server, 9, issued_at=past, expires_at=past + timedelta(minutes=1))) == "EXPIRED"
    )
    assert outcome(forged(fleet_event(server, 10), scope={"kind": "everyone"})) == "MALFORMED"
    assert outcome(fleet_event(server, 11, command="TERMINATE")) == "OK"


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def fleet_status(live: LiveServer, command_id: str) -> dict[str, Any]:
    response = live.admin("GET", f"/v1/kill-switch/fleet-commands/{command_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def lineage_trigger(live: LiveServer, root: str, command: str) -> dict[str, Any]:
    response = live.admin(
        "POST", "/v1/kill-switch/trigger", json={"agent_id": root, "command": command, "reason": "branch"}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["fleet"] is True
    return body


def intruders(agent_id: str, tenant_id: str) -> dict[str, SseEvent]:
    """Fleet commands the agent must not obey: forged, another tenant's, another lineage's."""
    return {
        "BAD_SIGNATURE": forged(fleet_event(SERVER_KEY, 900, tenant_id=tenant_id), reason="changed"),
        "WRONG_TENANT": fleet_event(SERVER_KEY, 901, tenant_id=str(uuid.uuid4())),
        "NOT_IN_SCOPE": fleet_event(
            SERVER_KEY, 902, tenant_id=tenant_id, scope=lineage_scope(str(uuid.uuid4()))
        ),
    }


def test_the_listener_obeys_its_lineage_fleet_command_and_ignores_and_reports_others(
    live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[KillSwitchCommand] = []
    with AigosClient(
        api_key=live.api_key, base_url=live.base_url, on_terminate="raise", set_default=False
    ) as aigos:
        aigos.register(name="fleet-root-sync")
        child = aigos.agent_id
        assert child is not None
        listener = aigos.on_kill_switch(received.append)
        assert listener.connected.wait(10)
        wait_for(lambda: listener.processor.tenant_id == live.tenant_id)
        with caplog.at_level(logging.WARNING, logger="aigos.sdk"):
            for code, event in intruders(child, live.tenant_id).items():
                caplog.clear()
                listener._handle_fleet(event)
                assert aigos.control.state == RUNNING, code
                warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
                # Reported: said so, and acknowledged as rejected (the server knows no such command).
                assert any("ignored" in line and code in line for line in warned), warned
                assert any("ack of" in line and "404" in line for line in warned), warned
        assert received == []

        # A real lineage PAUSE from the server, whose root is this agent: obeyed and acknowledged once.
        descendant = live.admin("POST", "/v1/agents/register", json={"name": "below", "parent_id": child})
        assert descendant.status_code == 201, descendant.text
        paused = lineage_trigger(live, child, "PAUSE")
        wait_for(lambda: len(received) == 1)
        assert aigos.control.state == PAUSED
        assert (received[0].command_id, received[0].agent_id) == (paused["command_id"], child)
        assert received[0].raw["scope"] == {"kind": "lineage", "root_agent_id": child}
        wait_for(lambda: fleet_status(live, paused["command_id"])["acknowledged"] == 1)
        lineage_trigger(live, child, "RESUME")
        wait_for(lambda: len(received) == 2)
        assert (received[1].command, aigos.control.state) == ("RESUME", RUNNING)
        listener.stop()


def test_the_async_listener_ignores_and_reports_a_foreign_fleet_command_and_obeys_its_own(
    live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with AsyncAigosClient(
            api_key=live.api_key, base_url=live.base_url, on_terminate="raise", set_default=False
        ) as aigos:
            await aigos.register(name="fleet-root-async")
            root = aigos.agent_id
            assert root is not None
            listener = aigos.on_kill_switch()
            await asyncio.wait_for(listener.connected.wait(), 10)
            for _ in range(500):
                if listener.processor.tenant_id == live.tenant_id:
                    break
                await asyncio.sleep(0.01)
            with caplog.at_level(logging.WARNING, logger="aigos.sdk"):
                for code, event in intruders(root, live.tenant_id).items():
                    caplog.clear()
                    await listener._handle_fleet(event)
                    assert aigos.control.state == RUNNING, code
                    assert any("ignored" in r.getMessage() and code in r.getMessage() for r in caplog.records)
            child = live.admin("POST", "/v1/agents/register", json={"name": "below", "parent_id": root})
            assert child.status_code == 201, child.text
            paused = await asyncio.to_thread(lineage_trigger, live, root, "PAUSE")
            for _ in range(1500):
                if aigos.control.state == PAUSED:
                    break
                await asyncio.sleep(0.01)
            assert aigos.control.state == PAUSED
            for _ in range(1500):
                status = await asyncio.to_thread(fleet_status, live, paused["command_id"])
                if status["acknowledged"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert status["acknowledged"] == 1
            await listener.stop()

    asyncio.run(scenario())
