"""The sync and async clients against a live server: register, guard, deny, telemetry, token refresh."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigos.sdk import (
    AgentTerminated,
    AigosClient,
    AigosError,
    AsyncAigosClient,
    ConfigurationError,
    PolicyDenied,
    guard,
)
from tests.aigrc.cards import card, unbounded
from tests.sdk.live import LiveServer

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def agent_events(live: LiveServer, agent_id: str) -> list[dict[str, Any]]:
    """The ``tool.*`` entries ``agent_id`` reported, from the audit log."""
    response = live.admin(
        "GET", "/v1/audit/events", params={"source": "agent", "agent_id": agent_id, "event_type": "tool.*"}
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true (asserts it became true)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def wait_for_events(live: LiveServer, agent_id: str, count: int) -> list[dict[str, Any]]:
    """The agent's reported events once ``count`` are in the log (the server writes them in batches;
    the audit API is rate-limited, so poll gently)."""
    wait_for(lambda: len(agent_events(live, agent_id)) >= count, interval=0.5)
    return agent_events(live, agent_id)


def upload_card(live: LiveServer, text: str) -> None:
    """Save an asset card in the live server's tenant."""
    headers = {"Authorization": f"Bearer {live.api_key}", "Content-Type": "application/yaml"}
    response = httpx.post(f"{live.base_url}/v1/aigrc/asset-cards", content=text, headers=headers, timeout=10)
    assert response.status_code in (200, 201), response.text


def test_register_guard_allow_deny_and_report(live: LiveServer) -> None:
    upload_card(live, unbounded("aigrc-2026-0a1b2c3d"))
    with AigosClient(
        api_key=live.api_key, base_url=live.base_url, asset_card_id="aigrc-2026-0a1b2c3d"
    ) as aigos:
        identity = aigos.register(
            name="research-assistant",
            capabilities={
                "tools": ["web_search", "file_read"],
                "domains": ["*.company.com"],
                "maxBudget": 10.0,
            },
        )
        assert identity.client_secret
        assert identity.identity_token
        assert identity.agent["asset_card_id"] == "aigrc-2026-0a1b2c3d"
        assert identity.agent["capabilities"]["max_budget"] == 10.0

        class ResearchAgent:
            def __init__(self) -> None:
                self.queries: list[str] = []

            @guard(tool="web_search", domain=lambda self, query: "docs.company.com")
            def search(self, query: str) -> str:
                self.queries.append(query)
                return f"results for {query}"

            @guard(tool="shell")
            def run(self, command: str) -> str:
                raise AssertionError("a denied call must not run")

            @guard(tool="web_search", domain="evil.example.org")
            def leak(self) -> None:
                raise AssertionError("a denied call must not run")

            @guard(tool="web_search")
            def broken(self) -> None:
                raise ValueError("boom")

        agent = ResearchAgent()
        assert agent.search("aigos") == "results for aigos"
        assert agent.queries == ["aigos"]
        assert agent.search.__name__ == "search"

        with pytest.raises(PolicyDenied) as denied:
            agent.run("rm -rf /")
        assert denied.value.code == "CAPABILITY_DENIED"
        assert "shell" in (denied.value.reason or "")
        assert denied.value.decision.decision_id
        with pytest.raises(PolicyDenied, match=r"evil\.example\.org"):
            agent.leak()
        with pytest.raises(ValueError, match="boom"):
            agent.broken()

        @guard(tool="web_search")
        async def fetch(url: str) -> str:  # a coroutine guarded by the sync client: checked off the loop
            return url

        assert asyncio.run(fetch("https://docs.company.com")) == "https://docs.company.com"

        decision = aigos.check(tool="file_read", resource="/etc/motd")
        assert decision.allowed
        assert not decision.local

        # A tenant policy with a deny rule: the denial names the rule.
        policy = live.admin(
            "POST",
            "/v1/policies",
            json={
                "name": "no deletes",
                "rules": [
                    {"id": "no-delete", "effect": "deny", "actions": ["tool.call"], "resources": ["delete_*"]}
                ],
            },
        )
        assert policy.status_code == 201, policy.text

        @guard(tool="file_read", resource="delete_all")
        def delete_all() -> None:
            raise AssertionError("a denied call must not run")

        def refused() -> PolicyDenied | None:
            try:
                delete_all()
            except PolicyDenied as exc:
                return exc
            return None

        wait_for(lambda: refused() is not None)
        exc = refused()
        assert exc is not None
        assert exc.matched_rule == "no-delete"

        aigos.flush()
        # Two completed, one failed; denied calls never ran. The server writes in batches: wait for it.
        events = wait_for_events(live, identity.agent_id, 3)
        kinds = [(e["event_type"], e["data"].get("tool"), e["data"].get("error")) for e in events]
        assert ("tool.completed", "web_search", None) in kinds
        assert ("tool.failed", "web_search", "ValueError") in kinds
        assert all(e["data"]["decision_id"] for e in events)
        assert not any(e["data"].get("tool") == "shell" for e in events)  # denied calls never ran


def test_token_refresh_proactive_and_after_revocation(live: LiveServer) -> None:
    with AigosClient(api_key=live.api_key, base_url=live.base_url, set_default=False) as registrar:
        identity = registrar.register(name="refresher", capabilities={"tools": ["web_search"]})

    # An agent configured with its client credentials only (as in production: AIGOS_CLIENT_ID/SECRET).
    # The token lives 3600 s; a margin of 3599 s makes the client renew it one second after issue.
    with AigosClient(
        base_url=live.base_url,
        client_id=identity.client_id,
        client_secret=identity.client_secret,
        refresh_margin=3599,
        set_default=False,
    ) as aigos:
        assert aigos.check(tool="web_search").allowed
        first = aigos.token()
        assert aigos.token() == first
        time.sleep(1.1)
        assert aigos.check(tool="web_search").allowed
        second = aigos.token()
        assert second != first

        # The token is revoked server-side: the next call is refused with 401, and the client recovers.
        revoked = httpx.post(
            live.base_url + "/oauth2/revoke",
            data={"token": second},
            auth=(identity.client_id, identity.client_secret or ""),
        )
        assert revoked.status_code == 200
        aigos._refresh_at = float("inf")  # keep using the revoked token until the server refuses it
        assert aigos.check(tool="web_search").allowed
        assert aigos.token() not in (first, second)


def test_misconfiguration_is_reported(live: LiveServer) -> None:
    with AigosClient(base_url=live.base_url, set_default=False) as bare:
        with pytest.raises(ConfigurationError, match="register"):
            bare.check(tool="web_search")
        with pytest.raises(ConfigurationError, match="API key"):
            bare.register(name="x")
    with pytest.raises(ConfigurationError, match="base_url"):
        AigosClient(base_url="ftp://nowhere", set_default=False)
    with AigosClient(api_key="aigos_sk_test_" + "x" * 43, base_url=live.base_url, set_default=False) as wrong:
        with pytest.raises(Exception) as refused:
            wrong.register(name="x")
        assert getattr(refused.value, "status", None) == 401


def test_async_client_guards_coroutines_and_obeys_the_kill_switch(live: LiveServer) -> None:
    async def scenario() -> None:
        async with AsyncAigosClient(
            api_key=live.api_key, base_url=live.base_url, on_terminate="raise"
        ) as aigos:
            identity = await aigos.register(name="async-bot", capabilities={"tools": ["web_search"]})

            @guard(tool="web_search")
            async def search(query: str) -> str:
                await asyncio.sleep(0)
                return query.upper()

            @guard(tool="shell")
            async def shell() -> None:
                raise AssertionError("a denied call must not run")

            assert await search("q") == "Q"
            with pytest.raises(PolicyDenied):
                await shell()

            listener = aigos.on_kill_switch()
            await asyncio.wait_for(listener.connected.wait(), 10)
            await asyncio.to_thread(live.trigger, identity.agent_id, "PAUSE")
            for _ in range(200):
                if aigos.control.state == "paused":
                    break
                await asyncio.sleep(0.05)
            pending = asyncio.create_task(search("held"))
            await asyncio.sleep(0.3)
            assert not pending.done()  # paused: waits
            await asyncio.to_thread(live.trigger, identity.agent_id, "RESUME")
            assert await asyncio.wait_for(pending, 10) == "HELD"

            await asyncio.to_thread(live.trigger, identity.agent_id, "TERMINATE")
            for _ in range(200):
                if aigos.control.terminated:
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(AgentTerminated):
                await search("again")
            await aigos.flush()
            events = await asyncio.to_thread(wait_for_events, live, identity.agent_id, 2)
            assert {e["event_type"] for e in events} == {"tool.completed"}

    asyncio.run(scenario())


def test_the_quickstart_example_stops_on_terminate(live: LiveServer) -> None:
    """The seed's scenario as a process: TERMINATE stops the guarded loop and ends the process cleanly."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIGOS_")},
        "AIGOS_API_KEY": live.api_key,
        "AIGOS_BASE_URL": live.base_url,
    }
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("registered agent "), first + process.stdout.read()
        agent_id = first.split()[-1]
        assert "denied as expected: CAPABILITY_DENIED" in process.stdout.readline()
        assert "1 guarded calls" in process.stdout.readline()
        live.trigger(agent_id, "TERMINATE", "demo over")
        code = process.wait(15)
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, output
    assert "Received kill switch: TERMINATE (demo over)" in output
    assert "done after" in output


def test_local_evaluation_from_the_signed_bundle(live: LiveServer) -> None:
    with AigosClient(
        api_key=live.api_key,
        base_url=live.base_url,
        local_evaluation=True,
        bundle_refresh=3600,
        set_default=False,
    ) as aigos:
        aigos.register(name="local-evaluator", capabilities={"tools": ["web_search", "file_*"]})
        assert aigos.local is not None
        allowed = aigos.check(tool="web_search")
        assert allowed.allowed
        assert allowed.local
        denied = aigos.check(tool="shell")
        assert (denied.allowed, denied.code, denied.local) == (False, "CAPABILITY_DENIED", True)
        remote = aigos.check(tool="shell", trace=True)
        assert (remote.allowed, remote.code, remote.local) == (False, "CAPABILITY_DENIED", False)
        costly = aigos.check(tool="web_search", estimated_cost=0.5)  # budgets are reserved on the server
        assert costly.allowed
        assert not costly.local

        assert aigos.refresh_bundle() is False  # unchanged: the ETag revalidates it
        policy = live.admin(
            "POST",
            "/v1/policies",
            json={
                "name": "no secrets",
                "rules": [{"id": "no-secrets", "effect": "deny", "resources": ["secret*"]}],
            },
        )
        assert policy.status_code == 201, policy.text
        wait_for(aigos.refresh_bundle)

        @guard(tool="file_read", resource=lambda path: path, client=aigos)
        def read(path: str) -> str:
            return path

        assert read("notes.txt") == "notes.txt"
        with pytest.raises(PolicyDenied) as refused:
            read("secrets.env")
        assert refused.value.matched_rule == "no-secrets"
        assert refused.value.decision.local

        # A tampered bundle is refused, and the server decides again.
        from aigos.sdk.local import BundleRejected, LocalPolicy, public_keys

        body = aigos.transport.request(
            "GET", "/v1/policies/bundle", headers={"Authorization": f"Bearer {aigos.token()}"}
        ).json()
        keys = public_keys(aigos.transport.request("GET", "/v1/policies/keys").json())
        assert LocalPolicy.load(body, keys, None).version >= 1
        body["payload"]["agent"]["tools"] = ["*"]
        with pytest.raises(BundleRejected, match="signature"):
            LocalPolicy.load(body, keys, None)


def test_outcomes_ride_on_the_next_check_and_bad_reports_fail_at_once(live: LiveServer) -> None:
    with AigosClient(api_key=live.api_key, base_url=live.base_url, telemetry_interval=3600) as aigos:
        identity = aigos.register(name="carrier", capabilities={"tools": ["web_search"]})

        @guard(tool="web_search")
        def search(query: str) -> str:
            return query

        for n in range(5):
            search(f"q{n}")
        # The fifth call's outcome waits for the next check; the first four rode on checks 2 to 5.
        assert len(aigos.telemetry) == 1
        assert aigos.check(tool="web_search").allowed
        assert len(aigos.telemetry) == 0
        assert aigos.telemetry.sent == 0  # not one POST /v1/telemetry
        events = wait_for_events(live, identity.agent_id, 5)
        assert sorted(e["data"]["tool"] for e in events) == ["web_search"] * 5

        for bad in ("policy.checked", "agent.registered", "nodots"):
            with pytest.raises(ValueError, match="cannot be reported"):
                aigos.report(bad, {})
        with pytest.raises(ValueError, match="not JSON"):
            aigos.report("custom.step", {"tags": {"a", "b"}})


def test_a_token_that_may_not_write_telemetry_still_checks(live: LiveServer) -> None:
    with AigosClient(api_key=live.api_key, base_url=live.base_url) as owner:
        identity = owner.register(name="narrow", capabilities={"tools": ["web_search"]})
    token = httpx.post(
        f"{live.base_url}/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": identity.client_id,
            "client_secret": identity.client_secret,
            "scope": "agent policies:check",
        },
    ).json()["access_token"]
    with AigosClient(base_url=live.base_url, agent_token=token, telemetry_interval=3600) as aigos:

        @guard(tool="web_search")
        def search(query: str) -> str:
            return query

        assert search("one") == "one"
        # The second check carries the first outcome, is refused for its scope, and is sent again bare.
        assert search("two") == "two"
        assert not aigos.carry_telemetry
        assert len(aigos.telemetry) == 2


def test_an_event_the_server_refuses_is_counted_never_resent_and_blocks_nothing(live: LiveServer) -> None:
    ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with AigosClient(api_key=live.api_key, base_url=live.base_url, telemetry_interval=3600) as aigos:
        identity = aigos.register(name="skewed", capabilities={"tools": ["web_search"]})
        # As a host whose clock runs a day ahead would stamp them (add() stamps with this host's clock).
        good = {"event_type": "tool.good", "data": {"tool": "web_search"}}
        late = {"event_type": "tool.late", "timestamp": ahead, "data": {}}
        aigos.telemetry.put_back([good, late])
        assert aigos.flush() == 1
        assert (aigos.telemetry.refused, len(aigos.telemetry)) == (1, 0)
        # A batch refused whole is not retried: the next flush has nothing to send.
        aigos.telemetry.put_back([late, late])
        assert aigos.flush() == 0
        assert (aigos.telemetry.refused, len(aigos.telemetry)) == (3, 0)
        # A check carrying it is sent again bare, and checks carry nothing more until a flush.
        aigos.telemetry.put_back([late, good])
        assert aigos.check(tool="web_search").allowed
        assert aigos.telemetry.carry_held
        assert len(aigos.telemetry) == 2
        assert aigos.check(tool="web_search").allowed
        assert len(aigos.telemetry) == 2
        assert aigos.flush() == 1
        assert (aigos.telemetry.refused, aigos.telemetry.carry_held) == (4, False)
        events = wait_for_events(live, identity.agent_id, 2)
        assert [e["event_type"] for e in events] == ["tool.good", "tool.good"]


def test_an_agent_registers_against_its_card_file(live: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "triage.aigrc.yaml"
    path.write_text(card(tools="web_search", **{"aigrc-2025-0a1b2c3d": "aigrc-2025-5dcafe01"}))
    with AigosClient(api_key=live.api_key, base_url=live.base_url, asset_card=str(path)) as aigos:
        assert aigos.asset_card is not None
        assert aigos.asset_card.id == "aigrc-2025-5dcafe01"
        # Beyond the card: refused here, before any request.
        with pytest.raises(AigosError) as refused:
            aigos.register(name="triage", capabilities={"tools": ["shell"]})
        assert refused.value.code == "EXCEEDS_ASSET_CARD"
        assert refused.value.status is None
        # Within it: the card is uploaded and the agent bound to it, carrying its Golden Thread.
        identity = aigos.register(name="triage")
        assert identity.agent["asset_card_id"] == "aigrc-2025-5dcafe01"
        assert identity.agent["capabilities"]["tools"] == ["web_search"]
        assert identity.agent["golden_thread"]["verified"] is True
        assert aigos.check(tool="web_search").allowed
        assert not aigos.check(tool="shell").allowed
    # A card that does not validate is refused when the client is made, naming the field.
    path.write_text(card(**{"riskLevel: limited": "riskLevel: extreme"}))
    with pytest.raises(ConfigurationError, match="/classification/riskLevel"):
        AigosClient(api_key=live.api_key, base_url=live.base_url, asset_card=str(path), set_default=False)
