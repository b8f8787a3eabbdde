"""Two server processes on one PostgreSQL and one Redis: tokens, revocations and suspensions are global."""

from __future__ import annotations

import base64
import json
import time
from functools import partial
from typing import Any

import httpx
import pytest

from tests.helpers import bearer
from tests.identity.replicas import settled, setup_agent, token_from
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow


def heartbeat(server: ServerProcess, agent: dict[str, Any], token: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/agents/{agent['agent_id']}/heartbeat", headers=bearer(token))


def test_tokens_and_their_revocation_are_shared(
    shared_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    one, two = shared_processes
    _, agent = setup_agent(one)
    token = token_from(one, agent)
    # Issued by one process, accepted by the other (and by itself).
    assert heartbeat(two, agent, token).status_code == 200, two.output()
    assert heartbeat(one, agent, token).status_code == 200
    introspected = httpx.post(
        two.base_url + "/oauth2/introspect",
        data={"token": token},
        auth=(agent["client_id"], agent["client_secret"]),
    )
    assert introspected.json()["active"] is True

    revoked = httpx.post(
        one.base_url + "/oauth2/revoke",
        data={"token": token},
        auth=(agent["client_id"], agent["client_secret"]),
    )
    assert revoked.status_code == 200
    # Process two had the token verified and cached; the revocation must still reach it.
    refused, tries = settled(lambda: heartbeat(two, agent, token), lambda r: r.status_code == 401)
    assert refused.status_code == 401, (one.output(), two.output())
    assert refused.json()["code"] == "TOKEN_REVOKED"
    assert tries == 1, f"process two accepted a revoked token {tries - 1} time(s) before refusing it"
    # Other tokens of the agent are unaffected on either process.
    fresh = token_from(two, agent)
    assert heartbeat(one, agent, fresh).status_code == 200
    assert heartbeat(two, agent, fresh).status_code == 200


def test_suspension_and_reactivation_are_shared(
    shared_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    one, two = shared_processes
    owner, agent = setup_agent(one)
    token = token_from(two, agent)
    assert heartbeat(two, agent, token).status_code == 200

    suspended = httpx.post(f"{one.base_url}/v1/agents/{agent['agent_id']}/suspend", headers=owner)
    assert suspended.status_code == 200, suspended.text
    refused, tries = settled(lambda: heartbeat(two, agent, token), lambda r: r.status_code == 401)
    assert refused.status_code == 401, (one.output(), two.output())
    assert refused.json()["code"] == "AGENT_SUSPENDED"
    assert tries == 1, f"process two accepted a suspended agent {tries - 1} time(s) before refusing it"
    denied = httpx.post(
        two.base_url + "/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(agent["client_id"], agent["client_secret"]),
    )
    assert denied.status_code == 401
    assert denied.json()["error"] == "invalid_client"

    # Reactivated on the other process: both accept again, and stay so (no stale message wins later).
    reactivated = httpx.post(f"{two.base_url}/v1/agents/{agent['agent_id']}/reactivate", headers=owner)
    assert reactivated.status_code == 200, reactivated.text
    for server in (one, two, one, two):
        accepted, _ = settled(partial(heartbeat, server, agent, token), lambda r: r.status_code == 200)
        assert accepted.status_code == 200, accepted.text

    # Suspend and reactivate back to back on different processes: the later change wins everywhere.
    assert (
        httpx.post(f"{one.base_url}/v1/agents/{agent['agent_id']}/suspend", headers=owner).status_code == 200
    )
    assert (
        httpx.post(f"{two.base_url}/v1/agents/{agent['agent_id']}/reactivate", headers=owner).status_code
        == 200
    )
    time.sleep(0.3)
    for server in (one, two):
        assert heartbeat(server, agent, token).status_code == 200, server.base_url


def test_deregistration_is_shared(shared_processes: tuple[ServerProcess, ServerProcess]) -> None:
    one, two = shared_processes
    owner, agent = setup_agent(two)
    token = token_from(one, agent)
    assert heartbeat(two, agent, token).status_code == 200
    assert httpx.delete(f"{one.base_url}/v1/agents/{agent['agent_id']}", headers=owner).status_code == 204
    refused, _ = settled(lambda: heartbeat(two, agent, token), lambda r: r.status_code == 401)
    assert refused.status_code == 401
    assert refused.json()["code"] == "AGENT_TERMINATED"
    assert (
        httpx.get(f"{two.base_url}/v1/agents/{agent['agent_id']}", headers=owner).json()["status"]
        == "terminated"
    )


def test_cached_clients_follow_changes_made_on_the_other_process(
    shared_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    """The token endpoint caches authenticated clients; a change on one replica clears them on all."""
    one, two = shared_processes
    owner, agent = setup_agent(one)
    token_from(two, agent)  # process 2 now has the client cached
    changed = httpx.patch(
        f"{one.base_url}/v1/agents/{agent['agent_id']}",
        json={"capabilities": {"tools": ["search"], "domains": [], "max_budget": 5}},
        headers=owner,
    )
    assert changed.status_code == 200, changed.text
    fresh = token_from(two, agent)
    payload = fresh.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aigos:capabilities"]["tools"] == ["search"]

    credentials = httpx.get(f"{one.base_url}/v1/agents/{agent['agent_id']}/credentials", headers=owner).json()
    revoked = httpx.delete(
        f"{one.base_url}/v1/agents/{agent['agent_id']}/credentials/{credentials[0]['id']}", headers=owner
    )
    assert revoked.status_code == 204
    refused = httpx.post(
        two.base_url + "/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(agent["client_id"], agent["client_secret"]),
    )
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
