"""Two server processes as replicas: an agent set up on one, tokens from either, and waiting for a change
to reach the other."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.helpers import signup_at
from tests.server_process import ServerProcess

#: How long a change made on one process may take to reach the other, should it not be there at once.
PROPAGATION_LIMIT = 1.0


def setup_agent(server: ServerProcess) -> tuple[dict[str, str], dict[str, Any]]:
    """A new tenant's owner headers and an agent registered under it, on ``server``."""
    owner = signup_at(server.base_url, "Replicas").headers
    registered = httpx.post(
        server.base_url + "/v1/agents/register", json={"name": "replicated"}, headers=owner
    )
    assert registered.status_code == 201, registered.text
    return owner, registered.json()


def token_from(server: ServerProcess, agent: dict[str, Any]) -> str:
    """An access token for ``agent`` from ``server`` (client credentials)."""
    response = httpx.post(
        server.base_url + "/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(agent["client_id"], agent["client_secret"]),
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def settled(
    check: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool]
) -> tuple[httpx.Response, int]:
    """The first answer of ``check``, retried (up to ``PROPAGATION_LIMIT``) until ``done``; and the tries."""
    deadline = time.monotonic() + PROPAGATION_LIMIT
    tries = 1
    response = check()
    while not done(response) and time.monotonic() < deadline:
        time.sleep(0.02)
        tries += 1
        response = check()
    return response, tries
