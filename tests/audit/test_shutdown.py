"""A real server stopped by SIGTERM right after acknowledging telemetry keeps every acknowledged event.

Seen in an outside run: 4,000 events answered 202, SIGTERM, and exactly one batch (1,000) missing: the
writer was cancelled in the middle of a flush and its batch was neither written nor put back.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import bearer
from tests.identity.replicas import setup_agent, token_from
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow

BATCHES, PER_BATCH = 40, 100


def test_sigterm_right_after_202_loses_no_event(tmp_path: Path, server_env: dict[str, str]) -> None:
    with ServerProcess(tmp_path / "server", server_env) as server:
        owner, agent = setup_agent(server)
        token = token_from(server, agent)
        with httpx.Client(base_url=server.base_url, headers=bearer(token)) as http:
            for batch in range(BATCHES):
                events = [
                    {"event_type": "custom.step", "data": {"batch": batch, "n": n}} for n in range(PER_BATCH)
                ]
                answered = http.post("/v1/telemetry", json={"events": events})
                assert answered.status_code == 202, answered.text
                assert answered.json()["accepted"] == PER_BATCH
        assert server.terminate() == 0

    with ServerProcess(tmp_path / "server", server_env) as again:
        listed = httpx.get(
            again.base_url + "/v1/audit/events",
            params={"event_type": "custom.step", "limit": 1},
            headers=owner,
        )
        assert listed.status_code == 200, listed.text
        assert listed.json()["total"] == BATCHES * PER_BATCH
