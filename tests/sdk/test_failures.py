"""Failure behaviour without our server: retries on 429/5xx honouring Retry-After, problem bodies turned
into typed errors, fail closed (default) or open when the server is unreachable, and forged, expired,
misdirected or replayed kill-switch commands refused. The peer is a tiny stdlib HTTP server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from aigos.core.commands import CommandRejected, sign_command
from aigos.core.signing import Signer
from aigos.sdk import AigosClient, AigosUnavailable, AsyncAigosClient, AuthenticationError, guard
from aigos.sdk.errors import AigosError
from aigos.sdk.killswitch import CommandProcessor
from aigos.sdk.retry import RetryPolicy
from aigos.sdk.sse import SseEvent
from aigos.sdk.transport import AsyncTransport, SyncTransport, raise_for_problem
from tests.server_process import free_port

AGENT = "7d7f3c9e-8a3b-4f1e-9c55-0c1f0b3a9e11"


class Script(BaseHTTPRequestHandler):
    """Answers each request with the next scripted (status, headers, body); records what it got."""

    answers: ClassVar[list[tuple[int, dict[str, str], dict[str, Any]]]] = []
    seen: ClassVar[list[tuple[str, str, float]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        Script.seen.append((self.command, self.path, time.monotonic()))
        status, headers, body = Script.answers.pop(0) if Script.answers else (200, {}, {"allowed": True})
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer  # noqa: N815 - the names http.server dispatches to

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def peer() -> Iterator[str]:
    """A scripted HTTP server on loopback; its base URL."""
    Script.answers, Script.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def problem(status: int, code: str) -> dict[str, Any]:
    return {"type": "about:blank", "title": "x", "status": status, "code": code, "detail": f"{code} detail"}


def agent_client(base_url: str, **options: Any) -> AigosClient:
    """A client with a ready token (no token endpoint needed)."""
    return AigosClient(base_url=base_url, agent_token="header.payload.sig", set_default=False, **options)


def test_retries_on_503_and_429_honour_retry_after(peer: str) -> None:
    Script.answers = [
        (503, {"Retry-After": "0.2"}, problem(503, "POLICY_STATE_STALE")),
        (429, {"Retry-After": "0"}, problem(429, "RATE_LIMITED")),
        (502, {}, {}),
        (200, {}, {"allowed": True, "decision_id": "d-1"}),
    ]
    transport = SyncTransport(peer, retry=RetryPolicy(max_retries=3, base=0.01))
    started = time.monotonic()
    response = transport.request("POST", "/v1/policies/check", json={"action": "x"})
    assert response.status == 200
    assert response.json()["decision_id"] == "d-1"
    assert len(Script.seen) == 4
    assert Script.seen[1][2] - Script.seen[0][2] >= 0.2  # waited as told by Retry-After
    assert time.monotonic() - started >= 0.2

    # Out of retries: the last answer, as a typed error with the server's code.
    Script.answers = [(503, {"Retry-After": "0"}, problem(503, "POLICY_STATE_STALE"))] * 2
    last = transport.request("GET", "/x", retries=1)
    with pytest.raises(AigosUnavailable) as unavailable:
        raise_for_problem(last)
    assert (unavailable.value.code, unavailable.value.status) == ("POLICY_STATE_STALE", 503)
    transport.close()


def test_an_unknown_outcome_is_not_sent_again(peer: str) -> None:
    # The change may have been made: a retry could register the same agent twice.
    Script.answers = [(503, {"Retry-After": "0"}, problem(503, "OUTCOME_UNKNOWN"))]
    transport = SyncTransport(peer, retry=RetryPolicy(max_retries=3, base=0.01))
    response = transport.request("POST", "/v1/agents/register", json={"name": "a"})
    assert response.status == 503
    assert len(Script.seen) == 1
    with pytest.raises(AigosUnavailable) as unavailable:
        raise_for_problem(response)
    assert unavailable.value.code == "OUTCOME_UNKNOWN"
    transport.close()


async def test_an_unknown_outcome_is_not_sent_again_async(peer: str) -> None:
    Script.answers = [(503, {"Retry-After": "0"}, problem(503, "OUTCOME_UNKNOWN"))]
    transport = AsyncTransport(peer, retry=RetryPolicy(max_retries=3, base=0.01))
    response = await transport.request("POST", "/v1/agents/register", json={"name": "a"})
    assert response.status == 503
    assert len(Script.seen) == 1
    await transport.close()


def test_problems_become_typed_errors(peer: str) -> None:
    Script.answers = [
        (401, {}, problem(401, "AGENT_SUSPENDED")),
        (400, {}, problem(400, "VALIDATION_FAILED")),
        (401, {}, {"error": "invalid_client", "error_description": "bad secret"}),
    ]
    with agent_client(peer) as aigos:
        with pytest.raises(AigosError) as gone:
            aigos.check(tool="t")
        assert gone.value.code == "AGENT_SUSPENDED"
        assert aigos.control.terminated  # the server says the agent may not act: nothing runs any more
        with pytest.raises(AigosError) as bad:
            aigos.check(tool="t")
        assert (bad.value.code, bad.value.status) == ("VALIDATION_FAILED", 400)
        assert bad.value.problem["detail"] == "VALIDATION_FAILED detail"
    with AigosClient(base_url=peer, client_id=AGENT, client_secret="s", set_default=False) as creds:
        with pytest.raises(AuthenticationError) as refused:
            creds.token()
        assert refused.value.code == "invalid_client"


def test_unreachable_server_fails_closed_by_default_and_open_when_configured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    ran: list[str] = []

    with agent_client(dead, max_retries=1, backoff_base=0.01) as closed:

        @guard(tool="web_search", client=closed)
        def search() -> None:
            ran.append("closed")

        with pytest.raises(AigosUnavailable):
            search()
    assert ran == []
    assert "failing closed" in caplog.text

    with agent_client(dead, max_retries=0, fail_open=True) as open_:

        @guard(tool="web_search", client=open_)
        def search_open() -> None:
            ran.append("open")

        search_open()
        decision = open_.check(tool="web_search")
        assert decision.allowed
        assert decision.fail_open
    assert ran == ["open"]
    assert "failing OPEN" in caplog.text


def test_environment_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGOS_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AIGOS_FAIL_OPEN", "true")
    monkeypatch.setenv("AIGOS_TIMEOUT", "2.5")
    monkeypatch.setenv("AIGOS_ON_PAUSE", "raise")
    with AigosClient(set_default=False) as aigos:
        config = aigos.config
        assert (config.base_url, config.fail_open, config.timeout, config.on_pause) == (
            "http://127.0.0.1:9",
            True,
            2.5,
            "raise",
        )
    with AigosClient(fail_open=False, set_default=False) as explicit:
        assert explicit.config.fail_open is False  # arguments win over the environment
    monkeypatch.setenv("AIGOS_TIMEOUT", "soon")
    with pytest.raises(AigosError, match="AIGOS_TIMEOUT"):
        AigosClient(set_default=False)


def test_async_client_fails_closed() -> None:
    import asyncio

    async def scenario() -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        async with AsyncAigosClient(
            base_url=dead, agent_token="a.b.c", max_retries=0, set_default=False
        ) as aigos:
            with pytest.raises(AigosUnavailable):
                await aigos.check(tool="web_search")

    asyncio.run(scenario())


# -- kill-switch commands ---------------------------------------------------------------------------


def signed(signer: Signer, sequence: int, **overrides: Any) -> SseEvent:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "command_id": f"00000000-0000-4000-8000-{sequence:012d}",
        "tenant_id": "11111111-1111-4111-8111-111111111111",
        "agent_id": AGENT,
        "command": "PAUSE",
        "reason": "test",
        "issued_at": now,
        "expires_at": now + timedelta(minutes=5),
        "nonce": f"n{sequence}",
        "sequence": sequence,
        **overrides,
    }
    command = sign_command(signer, **fields)
    return SseEvent(str(sequence), "kill-switch", json.dumps(command.to_json()))


def test_commands_are_verified_before_they_are_obeyed() -> None:
    server_key, stranger = Signer.from_seed(b"\x01" * 32), Signer.from_seed(b"\x02" * 32)
    processor = CommandProcessor(AGENT)
    processor.keys = {server_key.key_id: server_key.public_key}

    def outcome(event: SseEvent) -> str:
        parsed = processor.parse(event)
        if not hasattr(parsed, "signature"):
            return "MALFORMED"
        try:
            processor.verify(parsed)  # type: ignore[arg-type]
        except CommandRejected as exc:
            return exc.code
        processor.accept(parsed)  # type: ignore[arg-type]
        return "OK"

    first = signed(server_key, 1)
    assert outcome(first) == "OK"
    assert outcome(first) == "REPLAYED"
    assert outcome(signed(stranger, 2)) == "UNKNOWN_KEY"
    forged = json.loads(signed(server_key, 2).data)
    forged["command"] = "RESUME"
    assert outcome(SseEvent("2", "kill-switch", json.dumps(forged))) == "BAD_SIGNATURE"
    assert outcome(signed(server_key, 2, agent_id="99999999-9999-4999-8999-999999999999")) == "WRONG_AGENT"
    past = datetime.now(UTC) - timedelta(minutes=10)
    assert outcome(signed(server_key, 2, issued_at=past, expires_at=past + timedelta(minutes=1))) == "EXPIRED"
    assert outcome(SseEvent("2", "kill-switch", "{not json")) == "MALFORMED"
    assert outcome(signed(server_key, 3)) == "OK"
    assert outcome(signed(server_key, 2)) == "OUT_OF_ORDER"
