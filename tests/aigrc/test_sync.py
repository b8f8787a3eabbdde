"""Cards synced from an AIGRC-compatible source (a real HTTP server here), on both backends: each card held
to the schema on its own, a failing source changing nothing, every run on the log; and a directory of
cards imported by the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from fastapi import FastAPI
from httpx import AsyncClient

from aigos.cli import app as cli
from aigos.server.aigrc.sync import CardSync
from tests.aigrc.cards import card, unbounded
from tests.helpers import TenantHandle
from tests.identity.helpers import assert_problem
from tests.live import Live


class Source:
    """An AIGRC source on a loopback port: ``answer`` is what ``GET /asset-cards`` returns next."""

    def __init__(self) -> None:
        self.answer: tuple[int, bytes] = (200, b"[]")
        self.seen: list[dict[str, str]] = []
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.seen.append(
                    {"path": self.path, "authorization": self.headers.get("Authorization", "")}
                )
                status, body = source.answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, cards: list[Any], status: int = 200) -> None:
        """Answer ``{"data": cards}`` next."""
        self.answer = (status, json.dumps({"data": cards}).encode())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source() -> Iterator[Source]:
    served = Source()
    yield served
    served.close()


def as_json(text: str) -> dict[str, Any]:
    # The cards' timestamps must stay text: a YAML 1.1 reader would make datetimes of them.
    loaded: dict[str, Any] = yaml.load(text, Loader=yaml.BaseLoader)
    loaded["runtime"]["capabilities"]["max_budget"] = 50
    loaded["intent"]["linked"] = True
    loaded["classification"]["riskFactors"]["customerFacing"] = True
    loaded["x-team-notes"] = {"kept": [1, 2]}
    return loaded


def connect(app: FastAPI, tenant: TenantHandle, url: str, *, allow_private: bool = True) -> CardSync:
    """The server's sync pointed at ``url`` for ``tenant``, as AIGRC_API_URL would configure it."""
    runtime = app.state.runtime
    runtime.aigrc = CardSync(
        runtime.database,
        runtime.events,
        runtime.identity,
        runtime.policy,
        uuid.UUID(tenant.id),
        url,
        "aigrc_sk_test",
        interval=0,
        allow_private=allow_private,
        allow_http=allow_private,
    )
    return runtime.aigrc


async def test_cards_are_synced_one_by_one_and_a_failing_source_changes_nothing(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle, tenant_b: TenantHandle, source: Source
) -> None:
    assert_problem(
        await client.post("/v1/aigrc/sync", headers=tenant_a.headers), 409, "AIGRC_SOURCE_NOT_CONFIGURED"
    )
    connect(app, tenant_a, source.url)
    first, second = as_json(card()), as_json(card(**{"aigrc-2025-0a1b2c3d": "aigrc-2025-0a1b2c3e"}))
    broken = {**first, "id": "not-an-id", "classification": {"riskLevel": "extreme", "riskFactors": {}}}
    source.serve([first, broken, second])

    synced = await client.post("/v1/aigrc/sync", headers=tenant_a.headers)
    assert synced.status_code == 200, synced.text
    result = synced.json()
    assert (result["outcome"], result["fetched"], result["created"], result["unchanged"]) == (
        "success",
        3,
        2,
        0,
    )
    (refused,) = result["refused"]
    assert refused["index"] == 1
    assert {"/id", "/classification/riskLevel"} <= {e["pointer"] for e in refused["errors"]}
    assert source.seen[-1] == {"path": "/api/asset-cards", "authorization": "Bearer aigrc_sk_test"}
    listed = await client.get("/v1/aigrc/asset-cards", headers=tenant_a.headers)
    assert {(c["id"], c["source"]) for c in listed.json()["data"]} == {
        ("aigrc-2025-0a1b2c3d", "sync"),
        ("aigrc-2025-0a1b2c3e", "sync"),
    }

    # Again: what did not change is left alone; a changed card is a new version.
    second["classification"]["riskLevel"] = "high"
    source.serve([first, second])
    again = (await client.post("/v1/aigrc/sync", headers=tenant_a.headers)).json()
    assert (again["unchanged"], again["updated"], again["created"]) == (1, 1, 0)

    # The source fails in each way it can: nothing changes, the last good copies stay.
    source.answer = (500, b"oops")
    failed = (await client.post("/v1/aigrc/sync", headers=tenant_a.headers)).json()
    assert (failed["outcome"], failed["detail"]) == ("failure", "the source answered HTTP 500")
    source.answer = (200, b"<html>")
    assert "not JSON" in (await client.post("/v1/aigrc/sync", headers=tenant_a.headers)).json()["detail"]
    source.answer = (200, b'{"cards": 3}')
    assert "no list" in (await client.post("/v1/aigrc/sync", headers=tenant_a.headers)).json()["detail"]
    source.close()
    gone = (await client.post("/v1/aigrc/sync", headers=tenant_a.headers)).json()
    assert (gone["outcome"], gone["detail"].split(":")[0]) == ("failure", "UNREACHABLE")
    after = await client.get("/v1/aigrc/asset-cards/aigrc-2025-0a1b2c3e", headers=tenant_a.headers)
    assert (after.json()["risk_level"], after.json()["version"]) == ("high", 2)
    last = await client.get("/v1/aigrc/sync", headers=tenant_a.headers)
    assert last.json()["outcome"] == "failure"

    events = await client.get(
        "/v1/audit/events", params={"event_type": "aigrc.synced"}, headers=tenant_a.headers
    )
    assert [e["outcome"] for e in events.json()["data"]] == ["failure"] * 4 + ["success"] * 2
    # The source is the configured tenant's alone.
    assert_problem(
        await client.post("/v1/aigrc/sync", headers=tenant_b.headers), 409, "AIGRC_SOURCE_NOT_CONFIGURED"
    )


async def test_a_source_on_a_private_address_is_refused_unless_allowed(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle, source: Source
) -> None:
    connect(app, tenant_a, source.url, allow_private=False)
    source.serve([as_json(card())])
    result = (await client.post("/v1/aigrc/sync", headers=tenant_a.headers)).json()
    assert result["outcome"] == "failure"
    assert result["detail"].split(":")[0] in ("SCHEME_NOT_ALLOWED", "ADDRESS_NOT_ALLOWED")
    assert source.seen == []  # nothing was sent
    assert (await client.get("/v1/aigrc/asset-cards", headers=tenant_a.headers)).json()["total"] == 0


async def test_the_cli_imports_a_repositorys_cards(live: Live, tmp_path: Path) -> None:
    owner = await live.tenant()
    folder = tmp_path / ".aigrc" / "cards"
    folder.mkdir(parents=True)
    (folder / "triage.yaml").write_text(card())
    (folder / "other.yml").write_text(unbounded("aigrc-2025-0000beef"))
    (folder / "broken.yaml").write_text(
        card(**{"riskLevel: limited": "riskLevel: extreme"}).replace("0a1b2c3d", "0a1b2c3f")
    )
    (folder / "notes.txt").write_text("not a card")
    url = str(live.http.base_url)
    args = ["aigrc", "import", str(tmp_path), "--url", url, "--api-key", owner.key]
    # The CLI is synchronous and this loop serves the app: run it beside the loop.
    result = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "broken.yaml: refused (400 VALIDATION_FAILED)" in lines
    assert any(line.startswith("  /classification/riskLevel: ") for line in lines), lines
    assert "other.yml: aigrc-2025-0000beef created (version 1)" in lines
    assert "triage.yaml: aigrc-2025-0a1b2c3d created (version 1)" in lines
    # Run again, on the cards directory itself this time: nothing changed.
    again = await asyncio.to_thread(
        CliRunner().invoke, cli, ["aigrc", "import", str(folder), *args[3:], "--json"]
    )
    rows = [json.loads(line) for line in again.output.splitlines()]
    assert {row["file"]: row.get("change") for row in rows} == {
        "broken.yaml": None,
        "other.yml": "unchanged",
        "triage.yaml": "unchanged",
    }
    listed = await live.http.get("/v1/aigrc/asset-cards", headers=owner.headers)
    assert {c["source"] for c in listed.json()["data"]} == {"directory"}

    checked = await asyncio.to_thread(CliRunner().invoke, cli, ["aigrc", "validate", str(tmp_path)])
    assert checked.exit_code == 1
    assert "broken.yaml: invalid" in checked.output
    assert "triage.yaml: aigrc-2025-0a1b2c3d (limited, approved) sha256:" in checked.output
