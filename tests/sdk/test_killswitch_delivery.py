"""Kill-switch commands reach a running guarded loop, on both backends: PAUSE holds it, RESUME releases
it, TERMINATE stops it; each command is acknowledged with what the agent did; a dropped stream resumes."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import pytest

from aigos.sdk import AgentTerminated, AigosClient, KillSwitchCommand, guard
from tests.sdk.live import LiveServer

pytestmark = pytest.mark.slow


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it is true (asserts it became true)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def command_status(live: LiveServer, command_id: str) -> dict[str, Any]:
    """``GET /v1/kill-switch/commands/{id}`` with the admin key."""
    response = live.admin("GET", f"/v1/kill-switch/commands/{command_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_pause_resume_terminate_a_running_guarded_loop(live_any: LiveServer) -> None:
    received: list[KillSwitchCommand] = []
    with AigosClient(
        api_key=live_any.api_key, base_url=live_any.base_url, on_terminate="raise", set_default=False
    ) as aigos:
        identity = aigos.register(name="looper", capabilities={"tools": ["web_search"]})
        listener = aigos.on_kill_switch(received.append)
        assert listener.connected.wait(10)

        calls: list[int] = []
        stopped: dict[str, Any] = {}

        @guard(tool="web_search", client=aigos)
        def step(n: int) -> None:
            calls.append(n)

        def loop() -> None:
            try:
                while True:
                    step(len(calls))
                    time.sleep(0.002)
            except AgentTerminated as exc:
                stopped["error"] = exc

        worker = threading.Thread(target=loop, daemon=True)
        worker.start()
        wait_for(lambda: len(calls) > 5)

        paused = live_any.trigger(identity.agent_id, "PAUSE", "maintenance")
        wait_for(lambda: aigos.control.state == "paused")
        held = len(calls)
        time.sleep(0.3)
        assert len(calls) <= held + 1  # at most one call was already past the gate
        assert worker.is_alive()

        # The connection drops (a proxy restart, say): the listener reconnects with Last-Event-ID and gets
        # the command sent meanwhile, without the PAUSE again.
        sock = listener._sock
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        resumed = live_any.trigger(identity.agent_id, "RESUME")
        wait_for(lambda: len(calls) > held + 5)

        terminated = live_any.trigger(identity.agent_id, "TERMINATE", "incident 42")
        worker.join(10)
        assert not worker.is_alive()
        assert isinstance(stopped["error"], AgentTerminated)

        wait_for(lambda: len(received) == 3)  # the handler runs after the state is applied and acked
        assert [c.command for c in received] == ["PAUSE", "RESUME", "TERMINATE"]
        assert [c.sequence for c in received] == [1, 2, 3]
        assert (received[0].reason, received[2].reason) == ("maintenance", "incident 42")
        assert received[2].command_id == terminated["command_id"]
        outcomes = {
            str(paused["command_id"]): "paused",
            str(resumed["command_id"]): "resumed",
            str(terminated["command_id"]): "terminated",
        }
        for command_id, outcome in outcomes.items():
            wait_for(lambda cid=command_id: command_status(live_any, cid)["status"] == "acknowledged")
            assert command_status(live_any, command_id)["ack_outcome"] == outcome
        listener.thread.join(10)
        assert not listener.running  # the stream closes after TERMINATE


def test_a_restarted_listener_refuses_a_command_superseded_before_the_restart(live_any: LiveServer) -> None:
    received: list[KillSwitchCommand] = []
    with AigosClient(
        api_key=live_any.api_key, base_url=live_any.base_url, on_terminate="raise", set_default=False
    ) as aigos:
        identity = aigos.register(name="restarted", capabilities={"tools": ["web_search"]})
        # Before this process started, a PAUSE was delivered but never acknowledged (the old process died
        # first), and the newer RESUME was obeyed and acknowledged: the PAUSE is still pending, unexpired.
        paused = live_any.trigger(identity.agent_id, "PAUSE")
        resumed = live_any.trigger(identity.agent_id, "RESUME")
        ack = httpx.post(
            f"{live_any.base_url}/v1/kill-switch/commands/{resumed['command_id']}/ack",
            json={"outcome": "resumed"},
            headers={"Authorization": f"Bearer {identity.identity_token}"},
            timeout=10,
        )
        assert ack.status_code == 200, ack.text

        listener = aigos.on_kill_switch(received.append)
        assert listener.connected.wait(10)
        # A command issued now arrives after whatever the stream sent first.
        later = live_any.trigger(identity.agent_id, "TERMINATE", "now")
        wait_for(lambda: any(c.command == "TERMINATE" for c in received))
        # The stale PAUSE (sequence 1, below the acknowledged 2) was refused, never obeyed.
        assert [(c.command, c.sequence) for c in received] == [("TERMINATE", 3)]
        assert command_status(live_any, str(paused["command_id"]))["ack_outcome"] is None
        wait_for(lambda: command_status(live_any, str(later["command_id"]))["status"] == "acknowledged")
        listener.thread.join(10)
