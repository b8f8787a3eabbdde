"""``/metrics`` on both backends: what the product did shows in its counters and histograms, once each,
labelled by route templates and codes (never by tenant or raw path). Two workers answering one scrape for
both is ``test_server_process.py``'s."""

from __future__ import annotations

import asyncio
from typing import Any

from httpx import AsyncClient

from aigos.server.telemetry import metrics
from tests.helpers import TenantHandle, prometheus_samples
from tests.killswitch.helpers import Live
from tests.killswitch.sse import SseClient


async def scrape(client: AsyncClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return prometheus_samples(response.text)


def grown(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """How much a sample grew between two scrapes (the process's counters outlive one test's app)."""
    return after.get(name, 0.0) - before.get(name, 0.0)


async def test_what_happened_is_counted_once_by_route_and_code(
    client: AsyncClient, tenant_a: TenantHandle
) -> None:
    before = await scrape(client)
    registered = await client.post("/v1/agents/register", json={"name": "bot"}, headers=tenant_a.headers)
    assert registered.status_code == 201
    agent: dict[str, Any] = registered.json()
    bearer = {"Authorization": f"Bearer {agent['identity_token']}"}
    form = {"grant_type": "client_credentials", "client_id": agent["client_id"]}
    issued = await client.post("/oauth2/token", data={**form, "client_secret": agent["client_secret"]})
    assert issued.status_code == 200
    refused = await client.post("/oauth2/token", data={**form, "client_secret": "aigos_cs_nope"})
    assert refused.status_code == 401
    checked = await client.post(
        "/v1/policies/check", json={"action": "read", "resource": "db"}, headers=bearer
    )
    assert checked.status_code == 200
    assert (await client.get(f"/v1/agents/{agent['agent_id']}", headers=tenant_a.headers)).status_code == 200
    assert (await client.get("/no/such/path")).status_code == 404
    paused = await client.post(
        "/v1/kill-switch/trigger",
        json={"agent_id": agent["agent_id"], "command": "PAUSE", "reason": "drill"},
        headers=tenant_a.headers,
    )
    assert paused.status_code == 201, paused.text
    command_id = paused.json()["command_id"]
    ack = f"/v1/kill-switch/commands/{command_id}/ack"
    for _ in range(2):  # the first acknowledgement stands; a repeat is not a second one
        assert (await client.post(ack, json={"outcome": "paused"}, headers=bearer)).status_code == 200
    after = await scrape(client)

    assert grown(before, after, "aigos_agent_registrations_total") == 1
    assert grown(before, after, 'aigos_tokens_issued_total{grant_type="client_credentials"}') == 1
    assert grown(before, after, 'aigos_tokens_refused_total{reason="invalid_client"}') == 1
    decided = sum(
        grown(before, after, name) for name in after if name.startswith("aigos_policy_checks_total")
    )
    assert decided == 1
    assert grown(before, after, "aigos_policy_check_duration_seconds_count") == 1
    assert grown(before, after, 'aigos_killswitch_commands_total{command="PAUSE",scope="agent"}') == 1
    assert grown(before, after, "aigos_killswitch_acknowledgement_seconds_count") == 1
    route = 'aigos_http_requests_total{method="GET",route="/v1/agents/{agent_id}",status="200"}'
    assert grown(before, after, route) == 1
    assert grown(before, after, 'aigos_http_requests_total{method="GET",route="unmatched",status="404"}') == 1
    check = 'aigos_http_requests_total{method="POST",route="/v1/policies/check",status="200"}'
    assert grown(before, after, check) == 1
    # The check's latency is its own histogram's; the HTTP one does not observe it a second time.
    assert not any('route="/v1/policies/check"' in name for name in after if "duration" in name)
    assert not any(agent["agent_id"] in name or tenant_a.id in name for name in after)


async def test_every_command_series_exists_before_the_first_command(client: AsyncClient) -> None:
    # An alert on increase() misses a series' first sample: the first PAUSE after a start must not.
    scraped = await scrape(client)
    for command in metrics.COMMANDS:
        for scope in metrics.SCOPES:
            assert f'aigos_killswitch_commands_total{{command="{command}",scope="{scope}"}}' in scraped


async def test_an_unknown_method_is_counted_as_other(client: AsyncClient) -> None:
    before = await scrape(client)
    response = await client.request("BREW", "/health")
    assert response.status_code == 405
    after = await scrape(client)
    assert grown(before, after, 'aigos_http_requests_total{method="other",route="/health",status="405"}') == 1
    assert not any("BREW" in name for name in after)


async def test_a_delivery_is_timed_from_trigger_to_the_stream(live: Live) -> None:
    owner = await live.tenant()
    agent = await live.agent(owner, "worker")
    before = prometheus_samples((await live.http.get("/metrics")).text)
    sse = SseClient(live.http)
    try:
        stream = await sse.open(agent["identity_token"])
        paused = await live.trigger(owner, agent=agent, command="PAUSE")
        assert paused.status_code == 201, paused.text
        delivered = await stream.next()
        assert delivered is not None
        assert delivered.json["command_id"] == paused.json()["command_id"]
        # Observed when the hub books the delivery, off the fan-out's path: poll until it has.
        for _ in range(100):
            after = prometheus_samples((await live.http.get("/metrics")).text)
            if grown(before, after, "aigos_killswitch_delivery_seconds_count") >= 1:
                break
            await asyncio.sleep(0.05)
    finally:
        await sse.aclose()
    assert grown(before, after, "aigos_killswitch_delivery_seconds_count") == 1
    # Sent and received on one machine within the test: it lands in a bucket of at most a few seconds.
    assert grown(before, after, 'aigos_killswitch_delivery_seconds_bucket{le="5.0"}') == 1
