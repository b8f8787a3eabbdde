"""The committed OpenAPI document, fuzzed by schemathesis against live ``aigos serve`` processes.

Every operation of ``docs/openapi.yaml`` gets a bounded number of generated requests, valid ones and
invalid ones, on both backends. A request must never answer 5xx, and every answer must have a status,
media type and body that the document declares. Generation is derandomised, so a run repeats exactly.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import Failure, FailureGroup

from tests.conftest import ADMIN_TOKEN, BACKENDS, SECRET_KEY
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
#: Generated requests per operation and generation mode: 69 operations x 2 modes x 2 backends, which
#: bounds the CI time. ``AIGOS_FUZZ_EXAMPLES`` asks for a deeper run by hand.
EXAMPLES = int(os.environ.get("AIGOS_FUZZ_EXAMPLES", "3"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: Operations an agent calls with its own access token; every other one gets the all-scopes API key.
AGENT_PLANE = {
    ("POST", "/v1/policies/check"),
    ("GET", "/v1/policies/bundle"),
    ("POST", "/v1/agents/{agent_id}/heartbeat"),
    ("POST", "/v1/kill-switch/commands/{command_id}/ack"),
    ("POST", "/v1/telemetry"),
}
#: Operations only the platform admin may call.
PLATFORM = {
    ("GET", "/v1/tenants"),
    ("GET", "/v1/admin/signing-keys"),
    ("POST", "/v1/admin/signing-keys/rotate"),
}
#: Streams stay open as long as their caller listens: each is fuzzed with a credential it refuses at once
#: (the right one would hold the request open until the timeout): the kill switch's with the API key, the
#: telemetry view's with the agent's token.
STREAMS = {
    ("GET", "/v1/kill-switch/stream"): "api_key",
    ("GET", "/v1/telemetry/events/stream"): "agent_token",
}


@dataclass
class Callers:
    """Who calls: the platform admin, a tenant key holding every scope, and one of its agents."""

    admin: str
    api_key: str
    agent_token: str

    def token_for(self, method: str, path: str) -> str:
        if (method, path) in PLATFORM:
            return self.admin
        if (method, path) in AGENT_PLANE:
            return self.agent_token
        return self.api_key


@dataclass
class Findings:
    """Failures by operation and check, each with the first request that showed it."""

    seen: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, label: str, failure: Failure, reproduction: str) -> None:
        key = (label, failure.title)
        if key not in self.seen:
            self.seen[key] = f"{label}: {failure.title}\n{failure.message}\n{reproduction}"

    def report(self) -> str:
        return "\n\n".join(self.seen.values())


@functools.cache
def committed_spec() -> schemathesis.BaseSchema:
    """``docs/openapi.yaml`` as schemathesis reads it, loaded once for both backends."""
    return schemathesis.openapi.from_path(str(SPEC))


@pytest.fixture(params=BACKENDS)
def live_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """One real ``aigos serve``: SQLite in its folder, or PostgreSQL + Redis."""
    if request.param == "embedded":
        env = {"AIGOS_SECRET_KEY": SECRET_KEY, "AIGOS_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN}
    else:
        env = request.getfixturevalue("replica_env")
    env = {**env, "AIGOS_ISSUER": "http://127.0.0.1", "AIGOS_LOG_LEVEL": "warning"}
    with ServerProcess(tmp_path, env) as server:
        yield server


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def callers_of(server: ServerProcess) -> Callers:
    """A tenant made through the API, a key with every scope, and a registered agent's token."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        signup = {
            "name": "Fuzzed",
            "slug": "fuzzed",
            "owner_email": "owner@fuzzed.example.com",
            "owner_password": "correct horse battery",
            "plan_tier": "enterprise",
        }
        owner_key = _created(http.post("/v1/tenants", json=signup, headers=admin))["api_key"]["key"]
        scopes = list(http.get("/v1/api-keys/scopes").json())
        key_spec = {"name": "fuzz", "scopes": scopes, "rate_limit_rpm": 1_000_000}
        owner = {"Authorization": f"Bearer {owner_key}"}
        api_key = _created(http.post("/v1/api-keys", json=key_spec, headers=owner))["key"]
        agent = _created(
            http.post(
                "/v1/agents/register", json={"name": "fuzzed"}, headers={"Authorization": f"Bearer {api_key}"}
            )
        )
        issued = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(agent["client_id"], agent["client_secret"]),
        )
        assert issued.status_code == 200, issued.text
    return Callers(ADMIN_TOKEN, api_key, issued.json()["access_token"])


def fuzz(
    operation: schemathesis.APIOperation, mode: GenerationMode, base_url: str, token: str, found: Findings
) -> None:
    """Send ``EXAMPLES`` generated requests for one operation and record what the checks refuse."""

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            reproduction = _reproduction(case, response)
            for failure in group.exceptions:
                found.add(operation.label, failure, reproduction)
        except Failure as failure:
            found.add(operation.label, failure, _reproduction(case, response))

    try:
        run()
    except Unsatisfiable:
        # Nothing in the operation can be made invalid (no parameters, no body): no negative cases.
        assert mode is GenerationMode.NEGATIVE, operation.label


def _reproduction(case: schemathesis.Case, response: schemathesis.Response) -> str:
    sent = json.dumps(case.body, default=repr)[:500]
    answer = response.content[:500].decode("utf-8", "replace")
    return (
        f"request: {case.method} {case.formatted_path} query={case.query!r} headers={case.headers!r} "
        f"body={sent}\nresponse: {response.status_code} {response.headers.get('content-type')} {answer}"
    )


@pytest.mark.timeout(120 + 60 * EXAMPLES)
def test_every_operation_answers_as_documented_without_server_errors(live_server: ServerProcess) -> None:
    schema = committed_spec()
    callers = callers_of(live_server)
    found = Findings()
    for result in schema.get_all_operations():
        operation = result.ok()
        token = callers.token_for(operation.method.upper(), operation.path)
        refused_by = STREAMS.get((operation.method.upper(), operation.path))
        if refused_by is not None:
            token = getattr(callers, refused_by)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, live_server.base_url, token, found)
    assert not found.seen, found.report()
