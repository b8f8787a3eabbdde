"""Two server processes on one PostgreSQL and one Redis: a delegation dies with its delegator on both."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import bearer
from tests.identity.replicas import settled, setup_agent, token_from
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow


TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def exchange(server: ServerProcess, subject_token: str, child_id: str) -> str:
    response = httpx.post(
        server.base_url + "/oauth2/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "requested_agent": child_id,
        },
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def check(server: ServerProcess, token: str) -> httpx.Response:
    body = {"action": "read", "resource": "doc", "context": {}}
    return httpx.post(server.base_url + "/v1/policies/check", json=body, headers=bearer(token))


def refused_at_once(server: ServerProcess, token: str, code: str) -> None:
    response, tries = settled(lambda: check(server, token), lambda r: r.status_code == 401)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == code, response.json()
    assert tries == 1, f"the other process accepted the delegated token {tries - 1} time(s) first"


def test_a_delegation_dies_with_its_delegator_on_every_replica(
    processes: tuple[ServerProcess, ServerProcess],
) -> None:
    one, two = processes
    owner, parent = setup_agent(one)
    created = httpx.post(
        one.base_url + "/v1/agents", json={"name": "child", "parent_id": parent["agent_id"]}, headers=owner
    )
    assert created.status_code == 201, created.text
    child: dict[str, Any] = created.json()

    # Exchanged on process two and verified (and cached) there.
    child_token = exchange(two, token_from(one, parent), child["id"])
    assert check(two, child_token).status_code == 200, two.output()
    suspended = httpx.post(f"{one.base_url}/v1/agents/{parent['agent_id']}/suspend", headers=owner)
    assert suspended.status_code == 200, suspended.text
    refused_at_once(two, child_token, "DELEGATOR_SUSPENDED")

    reactivated = httpx.post(f"{one.base_url}/v1/agents/{parent['agent_id']}/reactivate", headers=owner)
    assert reactivated.status_code == 200, reactivated.text
    parent_token = token_from(two, parent)
    child_token = exchange(one, parent_token, child["id"])
    accepted, _ = settled(lambda: check(two, child_token), lambda r: r.status_code == 200)
    assert accepted.status_code == 200, accepted.text
    # The parent's token revoked on process one: the child's token from it is refused on two at once.
    revoked = httpx.post(
        one.base_url + "/oauth2/revoke",
        data={"token": parent_token},
        auth=(parent["client_id"], parent["client_secret"]),
    )
    assert revoked.status_code == 200
    refused_at_once(two, child_token, "TOKEN_REVOKED")
