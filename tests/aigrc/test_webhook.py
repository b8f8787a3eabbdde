"""Back to AIGRC, on both backends: a card's runtime record exported as EVT-001 envelopes, and the same
envelopes delivered by a signed webhook to a real HTTP receiver, retried, then dead-lettered, never lost."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from aigos.core import aigrcevents
from aigos.server.aigrc.webhook import SIGNATURE_HEADER, Webhook
from tests.aigrc.cards import card, upload
from tests.helpers import TenantHandle
from tests.identity.helpers import assert_problem

SECRET = "whsec_test"
LINKED = {"type": "linked", "system": "aigrc", "ref": "FIN-1234", "status": "verified"}


class Receiver:
    """An AIGRC webhook endpoint on a loopback port; answers ``status`` to every POST."""

    def __init__(self) -> None:
        self.status = 202
        self.received: list[tuple[str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((self.headers.get(SIGNATURE_HEADER, ""), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/aigos"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    yield served
    served.server.shutdown()
    served.server.server_close()


def verified(signature: str, body: bytes) -> bool:
    """The receiver's check of ``X-AIGOS-Signature``, written from the documented scheme."""
    parts = dict(part.split("=", 1) for part in signature.split(","))
    expected = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


async def scenario(client: AsyncClient, app: FastAPI, tenant: TenantHandle) -> dict[str, Any]:
    """A card, an agent registered against it that made an allowed and a denied check, and an agent that
    is not: the log as it stands after."""
    assert (await upload(client, tenant, card())).status_code == 201
    body = {
        "name": "triage",
        "asset_card_id": "aigrc-2025-0a1b2c3d",
        "capabilities": {"tools": ["web_search"]},
    }
    bound = await client.post("/v1/agents/register", json=body, headers=tenant.headers)
    assert bound.status_code == 201, bound.text
    other = await client.post("/v1/agents/register", json={"name": "unbound"}, headers=tenant.headers)
    agent: dict[str, Any] = bound.json()
    for who, tool in ((agent, "web_search"), (agent, "shell"), (other.json(), "web_search")):
        check = {"action": "tool.call", "resource": tool, "context": {"tool": tool}}
        answered = await client.post(
            "/v1/policies/check", json=check, headers={"Authorization": f"Bearer {who['identity_token']}"}
        )
        assert answered.status_code == 200
    await app.state.runtime.events.flush(everything=True)
    return agent


async def test_a_cards_runtime_record_is_exported_as_evt_001_envelopes(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle
) -> None:
    agent = await scenario(client, app, tenant_a)
    exported = await client.get("/v1/aigrc/asset-cards/aigrc-2025-0a1b2c3d/export", headers=tenant_a.headers)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    envelopes = [json.loads(line) for line in exported.text.splitlines()]
    assert [e["type"] for e in envelopes][:2] == ["agent.live", "agent.registered"]
    assert {"policy.checked", "policy.violated"} & {e["type"] for e in envelopes}
    for envelope in envelopes:
        assert envelope["id"].startswith("evt_")
        assert len(envelope["id"]) == 36
        assert envelope["hash"] == aigrcevents.envelope_hash(envelope)
        assert (envelope["orgId"], envelope["assetId"], envelope["tool"]) == (
            tenant_a.id,
            "aigrc-2025-0a1b2c3d",
            "aigos",
        )
        assert envelope["goldenThread"] == {
            "type": "linked",
            "system": "aigrc",
            "ref": "FIN-1234",
            "status": "verified",
        }
    # Only the card's agents: the unbound agent's check is not there.
    assert {e["data"]["agent_id"] for e in envelopes} == {agent["agent_id"]}
    assert_problem(
        await client.get("/v1/aigrc/asset-cards/aigrc-2025-ffffffff/export", headers=tenant_a.headers),
        404,
        "ASSET_CARD_NOT_FOUND",
    )


async def test_the_webhook_delivers_signed_batches_then_dead_letters_what_is_refused(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle, receiver: Receiver
) -> None:
    runtime = app.state.runtime
    assert_problem(
        await client.get("/v1/aigrc/webhook", headers=tenant_a.headers), 409, "AIGRC_WEBHOOK_NOT_CONFIGURED"
    )
    agent = await scenario(client, app, tenant_a)
    webhook = Webhook(
        runtime.database,
        runtime.events,
        uuid.UUID(tenant_a.id),
        receiver.url,
        SECRET,
        attempts=2,
        backoff=(0.01, 0.01),
        allow_private=True,
    )
    runtime.aigrc_webhook = webhook
    first = await webhook.deliver()
    assert first.delivered >= 3
    ((signature, body),) = receiver.received
    assert verified(signature, body)
    sent = json.loads(body)
    assert all(e["hash"] == aigrcevents.envelope_hash(e) for e in sent)
    assert {e["data"]["agent_id"] for e in sent} == {agent["agent_id"]}
    # Nothing new: nothing sent.
    assert (await webhook.deliver()).delivered == 0
    assert len(receiver.received) == 1

    # The receiver refuses: retried, then kept as dead letters, and the cursor moves on.
    receiver.status = 500
    bearer = {"Authorization": f"Bearer {agent['identity_token']}"}
    check = {"action": "tool.call", "resource": "shell", "context": {"tool": "shell"}}
    assert (await client.post("/v1/policies/check", json=check, headers=bearer)).status_code == 200
    await runtime.events.flush(everything=True)
    refused = await webhook.deliver()
    assert (refused.delivered, refused.dead) == (0, 1)
    assert len(receiver.received) == 3  # two attempts
    progress = await client.get("/v1/aigrc/webhook", headers=tenant_a.headers)
    assert progress.json() == {"cursor": refused.cursor, "dead_letters": 1}
    letters = await client.get("/v1/aigrc/webhook/dead-letters", headers=tenant_a.headers)
    (letter,) = letters.json()["data"]
    assert letter["error"] == "the receiver answered HTTP 500"
    assert letter["attempts"] == 2
    assert letter["envelope"]["type"] in ("policy.checked", "policy.violated")
    events = await client.get(
        "/v1/audit/events", params={"event_type": "aigrc.webhook_dead_lettered"}, headers=tenant_a.headers
    )
    assert events.json()["data"][0]["data"]["count"] == 1
    # Back up: later events flow again.
    receiver.status = 200
    assert (await client.post("/v1/policies/check", json=check, headers=bearer)).status_code == 200
    await runtime.events.flush(everything=True)
    assert (await webhook.deliver()).delivered == 1
    await webhook.stop()
