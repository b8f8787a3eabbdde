"""The audit API: listing and filtering the log, tenant isolation, scopes, proofs, checkpoints, export."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import delete, insert

from aigos.core import auditlog, merkle, signing
from aigos.core.merkle import CompactRange
from aigos.server.audit import service
from aigos.server.audit.events import NewEvent
from aigos.server.audit.models import AuditAnchor, AuditEvent, AuditPruneGuard
from aigos.server.config import Settings
from aigos.server.db import Database
from tests.audit.helpers import (
    admin_dsn,
    download,
    published_keys,
    record,
    record_bulk,
    records,
    rename,
    sqlite_path,
)
from tests.helpers import TenantHandle, bearer, signup

# -- helpers ---------------------------------------------------------------------------------------------


async def new_key(client: AsyncClient, tenant: TenantHandle, *scopes: str) -> dict[str, str]:
    """Headers with a new key of ``tenant`` holding only ``scopes`` (records ``api_key.created``)."""
    response = await client.post(
        "/v1/api-keys", json={"name": "audit-test", "scopes": list(scopes)}, headers=tenant.headers
    )
    assert response.status_code == 201, response.text
    return bearer(response.json()["key"])


async def events(client: AsyncClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    """``GET /v1/audit/events`` with ``params``; asserts 200."""
    response = await client.get("/v1/audit/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def problem(response: Any, status: int, code: str) -> None:
    """Assert ``response`` is a problem document with ``status`` and ``code``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


# -- listing --------------------------------------------------------------------------------------------


async def test_tenancy_actions_are_listed_newest_first_as_hashed(client: AsyncClient) -> None:
    tenant = await signup(client, "Alpha")
    created = await client.post(
        "/v1/api-keys", json={"name": "ci", "scopes": ["tenant:read"]}, headers=tenant.headers
    )
    key_id = created.json()["id"]
    await client.post(f"/v1/api-keys/{key_id}/rotate", json={"grace_seconds": 0}, headers=tenant.headers)
    await client.delete(f"/v1/api-keys/{key_id}", headers=tenant.headers)
    await rename(client, tenant, "Alpha 2")

    body = await events(client, tenant.headers)
    types = [item["event_type"] for item in body["data"]]
    assert types == [
        "tenant.updated",
        "api_key.revoked",
        "api_key.rotated",
        "api_key.created",
        "tenant.created",
    ]
    assert body["total"] == 5
    assert (body["page"], body["limit"]) == (1, 50)
    assert [item["seq"] for item in body["data"]] == [5, 4, 3, 2, 1]
    chain = list(reversed(body["data"]))
    previous = auditlog.GENESIS_HASH
    for item in chain:
        assert item["tenant_id"] == tenant.id
        assert item["prev_hash"] == previous
        assert item["hash"] == auditlog.entry_hash(item)
        previous = item["hash"]
    first = chain[0]
    assert first["actor"] == {"type": "user", "id": tenant.owner_id}
    assert first["data"]["slug"] == tenant.slug
    assert chain[1]["actor"] == {"type": "api_key", "id": tenant.key_id}
    assert chain[1]["data"]["api_key_id"] == key_id
    assert all(item["source"] == "server" and item["outcome"] == "success" for item in chain)

    one = await client.get(f"/v1/audit/events/{first['event_id']}", headers=tenant.headers)
    assert one.status_code == 200
    assert one.json() == first


async def test_filters(client: AsyncClient, app: FastAPI) -> None:
    tenant = await signup(client, "Alpha")
    await new_key(client, tenant, "tenant:read")
    await rename(client, tenant, "Alpha 2")
    reported = await record(
        app, tenant, 2, agent_id="agent-7", source="agent", outcome="denied", event_type="policy.checked"
    )
    await record(app, tenant, 1, event_type="api_keys.lookalike")

    async def seqs(**params: Any) -> list[int]:
        body = await events(client, tenant.headers, **params)
        assert body["total"] == len(body["data"])
        return [item["seq"] for item in body["data"]]

    assert await seqs(event_type="api_key.created") == [2]
    assert await seqs(event_type="api_key.*") == [2]  # the prefix keeps its dot: not `api_keys.lookalike`
    assert await seqs(event_type="api_keys.*") == [6]
    assert await seqs(event_type="tenant.*") == [3, 1]
    assert await seqs(actor_type="user") == [1]
    assert await seqs(actor_type="api_key", actor_id=tenant.key_id) == [3, 2]
    assert await seqs(actor_type="agent") == [6, 5, 4]
    assert await seqs(agent_id="agent-7") == [5, 4]
    assert await seqs(source="agent") == [5, 4]
    assert await seqs(outcome="denied") == [5, 4]
    assert await seqs(outcome="success", source="server") == [6, 3, 2, 1]
    assert await seqs(agent_id="nobody") == []
    assert [
        item["event_id"] for item in (await events(client, tenant.headers, agent_id="agent-7"))["data"]
    ] == [entry["event_id"] for entry in reversed(reported)]

    recorded = datetime.fromisoformat(reported[0]["recorded_at"])
    assert await seqs(since=recorded.isoformat()) == [6, 5, 4]
    assert await seqs(until=recorded.isoformat()) == [3, 2, 1]
    later = (recorded + timedelta(days=1)).isoformat()
    assert await seqs(since=later) == []
    assert await seqs(since="2000-01-01T00:00:00+02:00", until=later) == [6, 5, 4, 3, 2, 1]


async def test_pagination(client: AsyncClient, app: FastAPI) -> None:
    tenant = await signup(client, "Alpha")
    await record(app, tenant, 11)
    seen: list[int] = []
    for page in (1, 2, 3, 4, 5):
        body = await events(client, tenant.headers, page=page, limit=5)
        assert (body["page"], body["limit"], body["total"]) == (page, 5, 12)
        seen.extend(item["seq"] for item in body["data"])
    assert seen == list(range(12, 0, -1))
    filtered = await events(client, tenant.headers, event_type="agent.reported", page=3, limit=5)
    assert [item["seq"] for item in filtered["data"]] == [2]
    assert filtered["total"] == 11


async def test_other_tenants_events_are_never_visible(client: AsyncClient) -> None:
    tenant_a = await signup(client, "Alpha")
    tenant_b = await signup(client, "Beta")
    await rename(client, tenant_b, "Beta 2")
    b_events = (await events(client, tenant_b.headers))["data"]
    assert {item["tenant_id"] for item in b_events} == {tenant_b.id}

    listed = await client.get("/v1/audit/events?limit=100", headers=tenant_a.headers)
    assert [item["tenant_id"] for item in listed.json()["data"]] == [tenant_a.id]
    assert tenant_b.id not in listed.text
    for item in b_events:
        for path in (f"/v1/audit/events/{item['event_id']}", f"/v1/audit/events/{item['event_id']}/proof"):
            response = await client.get(path, headers=tenant_a.headers)
            problem(response, 404, "EVENT_NOT_FOUND")
            assert "Beta" not in response.text
    for path in ("/v1/audit/checkpoints/latest", "/v1/audit/export"):
        response = await client.get(path, headers=tenant_a.headers)
        assert tenant_b.id not in response.text
        assert "Beta" not in response.text
    verified = (await client.post("/v1/audit/verify", headers=tenant_a.headers)).json()
    assert (verified["ok"], verified["tenant_id"], verified["entries"]) == (True, tenant_a.id, 1)


async def test_scope_is_enforced(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    tenant = await signup(client, "Alpha")
    event_id = (await events(client, tenant.headers))["data"][0]["event_id"]
    reader = await new_key(client, tenant, "audit:read")
    other = await new_key(client, tenant, "tenant:read", "usage:read")
    calls = [
        ("GET", "/v1/audit/events"),
        ("GET", f"/v1/audit/events/{event_id}"),
        ("GET", f"/v1/audit/events/{event_id}/proof"),
        ("GET", "/v1/audit/checkpoints/latest"),
        ("GET", "/v1/audit/export"),
        ("POST", "/v1/audit/verify"),
    ]
    for method, path in calls:
        assert (await client.request(method, path, headers=reader)).status_code == 200, path
        refused = await client.request(method, path, headers=other)
        problem(refused, 403, "INSUFFICIENT_SCOPE")
        assert refused.json()["scope"] == "audit:read"
        problem(await client.request(method, path, headers=admin_headers), 403, "TENANT_REQUIRED")
        problem(await client.request(method, path), 401, "UNAUTHENTICATED")
    # The signing keys are public.
    assert (await client.get("/v1/audit/keys")).status_code == 200


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"actor_type": "robot"}, "query:actor_type"),
        ({"source": "elsewhere"}, "query:source"),
        ({"since": "yesterday"}, "query:since"),
        ({"until": "2026-13-01T00:00:00Z"}, "query:until"),
        ({"since": "2026-01-01T00:00:00"}, "query:since"),  # no zone: refused, not guessed
        ({"event_type": "api_key.*.created"}, "query:event_type"),
        ({"event_type": "api key"}, "query:event_type"),
        ({"event_type": "x" * 101}, "query:event_type"),
        ({"limit": 101}, "query:limit"),
        ({"limit": 0}, "query:limit"),
        ({"page": 0}, "query:page"),
        ({"outcome": "o" * 21}, "query:outcome"),
    ],
)
async def test_invalid_filters_are_400(client: AsyncClient, params: dict[str, Any], pointer: str) -> None:
    tenant = await signup(client, "Alpha")
    response = await client.get("/v1/audit/events", params=params, headers=tenant.headers)
    problem(response, 400, "VALIDATION_FAILED")
    assert response.json()["errors"][0]["pointer"] == pointer


async def test_unknown_and_malformed_event_ids(client: AsyncClient) -> None:
    tenant = await signup(client, "Alpha")
    problem(
        await client.get(f"/v1/audit/events/{uuid.uuid4()}", headers=tenant.headers), 404, "EVENT_NOT_FOUND"
    )
    problem(await client.get("/v1/audit/events/not-a-uuid", headers=tenant.headers), 400, "VALIDATION_FAILED")
    problem(
        await client.get(f"/v1/audit/events/{uuid.uuid4()}/proof", headers=tenant.headers),
        404,
        "EVENT_NOT_FOUND",
    )


# -- proofs and checkpoints -----------------------------------------------------------------------------


def assert_proof_verifies(body: dict[str, Any], keys: dict[str, bytes]) -> None:
    """Check an inclusion proof the way an outside auditor would: nothing taken on trust but ``keys``."""
    entry, checkpoint = body["entry"], body["checkpoint"]
    assert auditlog.verify_checkpoint(checkpoint, keys) is None
    assert body["tree_size"] == checkpoint["tree_size"]
    assert body["leaf_index"] == entry["seq"] - 1
    leaf = auditlog.entry_leaf(auditlog.entry_hash(entry))
    path = [bytes.fromhex(node) for node in body["proof"]]
    root = bytes.fromhex(checkpoint["root_hash"])
    assert merkle.verify_inclusion(leaf, body["leaf_index"], body["tree_size"], path, root)
    # The same proof must not vouch for a different entry or position.
    other = auditlog.entry_leaf(auditlog.entry_hash({**entry, "data": {"forged": True}}))
    assert not merkle.verify_inclusion(other, body["leaf_index"], body["tree_size"], path, root)
    if body["tree_size"] > 1:
        wrong = (body["leaf_index"] + 1) % body["tree_size"]
        assert not merkle.verify_inclusion(leaf, wrong, body["tree_size"], path, root)


async def test_inclusion_proofs_verify(client: AsyncClient, app: FastAPI) -> None:
    tenant = await signup(client, "Alpha")
    keys = await published_keys(client)
    await record(app, tenant, 6)
    listed = (await events(client, tenant.headers))["data"]
    for item in listed:
        response = await client.get(f"/v1/audit/events/{item['event_id']}/proof", headers=tenant.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["entry"] == item
        assert body["tree_size"] == 7
        assert_proof_verifies(body, keys)

    # A newer event than the latest checkpoint: the proof seals a new one first.
    (newer,) = await record(app, tenant, 1)
    body = (await client.get(f"/v1/audit/events/{newer['event_id']}/proof", headers=tenant.headers)).json()
    assert body["tree_size"] == 8
    assert_proof_verifies(body, keys)
    # An older event is proven against the latest checkpoint, not a stale one.
    body = (
        await client.get(f"/v1/audit/events/{listed[-1]['event_id']}/proof", headers=tenant.headers)
    ).json()
    assert (body["tree_size"], body["leaf_index"]) == (8, 0)
    assert_proof_verifies(body, keys)


async def test_latest_checkpoint_is_signed_by_the_published_key(client: AsyncClient, app: FastAPI) -> None:
    tenant = await signup(client, "Alpha")
    published = (await client.get("/v1/audit/keys")).json()
    signer = app.state.runtime.events.signer
    assert published == {
        "keys": [{"key_id": signer.key_id, "alg": "Ed25519", "public_key": signing.b64url(signer.public_key)}]
    }
    keys = await published_keys(client)
    await record(app, tenant, 2)

    checkpoint = (await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)).json()
    assert auditlog.verify_checkpoint(checkpoint, keys) is None
    listed = list(reversed((await events(client, tenant.headers))["data"]))
    assert checkpoint["tenant_id"] == tenant.id
    assert checkpoint["tree_size"] == 3
    assert checkpoint["head_hash"] == listed[-1]["hash"]
    assert (
        checkpoint["root_hash"]
        == merkle.root_of([auditlog.entry_leaf(item["hash"]) for item in listed]).hex()
    )
    assert (
        auditlog.verify_checkpoint({**checkpoint, "tree_size": 2}, keys) == "checkpoint signature is invalid"
    )

    # Nothing new: the same checkpoint; one more event: a new one covering it.
    again = (await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)).json()
    assert again == checkpoint
    await record(app, tenant, 1)
    newer = (await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)).json()
    assert newer["tree_size"] == 4
    assert auditlog.verify_checkpoint(newer, keys) is None


# -- export and verification ----------------------------------------------------------------------------


async def test_export_verifies_with_checkpoints_in_place(client: AsyncClient, app: FastAPI) -> None:
    tenant = await signup(client, "Alpha")
    keys = await published_keys(client)
    sealed_at = []
    for _ in range(3):
        await record(app, tenant, 2)
        sealed_at.append((await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)).json())
    await record(app, tenant, 2)  # unsealed until the export seals it

    response = await client.get("/v1/audit/export", headers=tenant.headers)
    assert tenant.id in response.headers["content-disposition"]
    lines = await download(client, tenant.headers)
    parsed = records(lines)
    header = parsed[0]
    assert header["kind"] == "header"
    assert header["format"] == auditlog.EXPORT_FORMAT
    assert header["tenant_id"] == tenant.id
    assert header["anchor"] is None
    assert header["keys"] == (await client.get("/v1/audit/keys")).json()["keys"]
    layout = [(r["kind"], r.get("seq", r.get("tree_size"))) for r in parsed[1:]]
    assert layout == [
        ("event", 1), ("event", 2), ("event", 3), ("checkpoint", 3),
        ("event", 4), ("event", 5), ("checkpoint", 5),
        ("event", 6), ("event", 7), ("checkpoint", 7),
        ("event", 8), ("event", 9), ("checkpoint", 9),
    ]  # fmt: skip
    assert [r for r in parsed if r["kind"] == "checkpoint"][:3] == [
        {"kind": "checkpoint", **checkpoint} for checkpoint in sealed_at
    ]
    listed = (await events(client, tenant.headers))["data"]
    assert [{k: v for k, v in r.items() if k != "kind"} for r in parsed if r["kind"] == "event"] == listed[
        ::-1
    ]

    report = auditlog.verify_export(lines, keys)
    assert report.ok, report.failure
    assert report.to_json() == {
        "ok": True,
        "tenant_id": tenant.id,
        "entries": 9,
        "first_seq": 1,
        "last_seq": 9,
        "checkpoints": 4,
        "sealed_through": 9,
        "unsealed": 0,
        "key_ids": sorted(keys),
        "losses": [],
        "lost": 0,
        "failure": None,
    }
    served = await client.post("/v1/audit/verify", headers=tenant.headers)
    assert served.status_code == 200
    assert served.json() == report.to_json()


async def test_export_pages_join_seamlessly(client: AsyncClient, app: FastAPI) -> None:
    tenant = await signup(client, "Alpha")
    for _ in range(3):
        await record(app, tenant, 3)
        await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)
    runtime = app.state.runtime
    plan = await service.plan_export(runtime.database, runtime.events.signer, uuid.UUID(tenant.id))
    assert plan.through == 10

    async def lines(page_rows: int) -> list[dict[str, Any]]:
        pages = [
            p
            async for p in service.export_pages(
                runtime.database, runtime.events.signer, plan, page_rows=page_rows
            )
        ]
        assert len(pages) == 1 + -(-10 // page_rows)  # the header, then one page per range
        return [{**r, "generated_at": None} for page in pages for r in records(page)]

    whole = await lines(1000)
    for page_rows in (1, 2, 3, 4, 7):
        assert await lines(page_rows) == whole, page_rows
    assert auditlog.verify_export([orjson.dumps(r) for r in whole]).ok


async def prune(settings: Settings, client: AsyncClient, tenant: TenantHandle, through: int) -> None:
    """What retention does to the oldest entries: anchor them, then delete them.

    Done by hand here so that the export's and the proofs' handling of a pruned prefix is tested on its own;
    the caller has sealed a checkpoint at ``through``, as retention does.
    """
    tenant_id = uuid.UUID(tenant.id)
    listed = (await events(client, tenant.headers, limit=100))["data"]
    pruned = sorted((item for item in listed if item["seq"] <= through), key=lambda item: item["seq"])
    compact = CompactRange()
    for item in pruned:
        compact.append(auditlog.entry_leaf(item["hash"]))
    anchor: dict[str, Any] = {
        "tenant_id": tenant_id,
        "seq": through,
        "head_hash": pruned[-1]["hash"],
        "compact_range": compact.to_json(),
        "pruned_at": datetime.now(UTC),
    }
    if settings.database_kind == "sqlite":
        database = Database(settings.resolved_database_url)
        try:
            async with database.session(tenant_id) as session:
                # A row in the guard table is the one condition under which the delete trigger lets go.
                await session.execute(insert(AuditPruneGuard).values(id=1))
                await session.execute(
                    delete(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.seq <= through)
                )
                await session.execute(delete(AuditPruneGuard))
                await session.execute(insert(AuditAnchor).values(**anchor))
        finally:
            await database.dispose()
        return
    conn = await asyncpg.connect(admin_dsn(settings.resolved_database_url.rsplit("/", 1)[1]))
    try:
        async with conn.transaction():
            # Retention drops whole partitions; deleting row by row, the append-only trigger must be bypassed.
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "DELETE FROM audit_events WHERE tenant_id = $1 AND seq <= $2", tenant_id, through
            )
            await conn.execute(
                "INSERT INTO audit_anchors (tenant_id, seq, head_hash, compact_range, pruned_at) "
                "VALUES ($1, $2, $3, $4::jsonb, $5)",
                tenant_id,
                through,
                anchor["head_hash"],
                orjson.dumps(anchor["compact_range"]).decode(),
                anchor["pruned_at"],
            )
    finally:
        await conn.close()


async def test_a_pruned_prefix_still_exports_proves_and_verifies(
    client: AsyncClient, app: FastAPI, settings: Settings
) -> None:
    tenant = await signup(client, "Alpha")
    keys = await published_keys(client)
    await record(app, tenant, 4)
    await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)  # sealed at 5, the cut
    await record(app, tenant, 2)
    await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)  # sealed at 7
    await record(app, tenant, 4)
    await prune(settings, client, tenant, 5)

    listed = (await events(client, tenant.headers, limit=100))["data"]
    assert [item["seq"] for item in listed] == list(range(11, 5, -1))
    parsed = records(await download(client, tenant.headers))
    anchor = parsed[0]["anchor"]
    assert (anchor["seq"], anchor["head_hash"]) == (5, listed[-1]["prev_hash"])
    layout = [(r["kind"], r.get("seq", r.get("tree_size"))) for r in parsed[1:]]
    assert layout == [
        ("checkpoint", 5), ("event", 6), ("event", 7), ("checkpoint", 7),
        ("event", 8), ("event", 9), ("event", 10), ("event", 11), ("checkpoint", 11),
    ]  # fmt: skip
    report = auditlog.verify_export([orjson.dumps(r) for r in parsed], keys)
    assert report.ok, report.failure
    assert (report.first_seq, report.last_seq, report.entries, report.checkpoints) == (6, 11, 6, 3)
    assert (await client.post("/v1/audit/verify", headers=tenant.headers)).json()["ok"] is True

    for item in listed:
        body = (await client.get(f"/v1/audit/events/{item['event_id']}/proof", headers=tenant.headers)).json()
        assert body["tree_size"] == 11
        assert_proof_verifies(body, keys)


async def test_empty_export_is_just_a_header(client: AsyncClient, app: FastAPI) -> None:
    """A tenant always has `tenant.created`; an unknown tenant id exports a header and nothing else."""
    runtime = app.state.runtime
    plan = await service.plan_export(runtime.database, runtime.events.signer, uuid.uuid4())
    assert plan.through == 0
    pages = [p async for p in service.export_pages(runtime.database, runtime.events.signer, plan)]
    assert len(pages) == 1
    report = auditlog.verify_export(pages[0])
    assert report.ok
    assert report.entries == 0


async def test_unusual_data_round_trips(client: AsyncClient, app: FastAPI) -> None:
    """Data with non-ASCII text, nesting and numbers hashes and verifies the same after a round trip."""
    tenant = await signup(client, "Alpha")
    odd = {"text": 'Zürich ✓ \u2028 "quoted"', "nested": {"b": [1, 2.5, None, True]}, "a": -7}
    await app.state.runtime.events.record(
        NewEvent(
            tenant_id=uuid.UUID(tenant.id),
            event_type="odd.data",
            actor_type="system",
            actor_id=None,
            data=odd,
        )
    )
    (item,) = (await events(client, tenant.headers, event_type="odd.data"))["data"]
    assert item["data"] == odd
    assert item["actor"] == {"type": "system", "id": None}
    assert auditlog.verify_export(await download(client, tenant.headers)).ok


async def test_a_long_log_verifies_on_the_server_page_after_page(client: AsyncClient, app: FastAPI) -> None:
    """Several verification pages and many slices of them: the server's report is the downloaded export's."""
    tenant = await signup(client, "Alpha")
    count = 3 * service.VERIFY_PAGE_ROWS + 123
    await record_bulk(app, client, tenant, count, checkpoint_every=1_000)
    served = await client.post("/v1/audit/verify", headers=tenant.headers)
    assert served.status_code == 200, served.text
    body = served.json()
    assert body["ok"] is True, body["failure"]
    assert (body["entries"], body["first_seq"], body["last_seq"]) == (count + 1, 1, count + 1)
    assert (body["sealed_through"], body["unsealed"]) == (count + 1, 0)
    assert (
        body
        == auditlog.verify_export(
            await download(client, tenant.headers), await published_keys(client)
        ).to_json()
    )


async def test_the_server_names_the_entry_where_a_long_log_breaks(
    client: AsyncClient, app: FastAPI, settings: Settings
) -> None:
    """An entry altered in the database deep in the third page is named, with its line and seq."""
    tenant = await signup(client, "Alpha")
    count = 3 * service.VERIFY_PAGE_ROWS
    await record_bulk(app, client, tenant, count, checkpoint_every=1_000)
    seq = 2 * service.VERIFY_PAGE_ROWS + 17
    tenant_id = uuid.UUID(tenant.id)
    if settings.database_kind == "sqlite":
        db = sqlite3.connect(sqlite_path(settings))
        try:
            # The append-only trigger is the server's; whoever holds the file can drop it.
            db.execute("DROP TRIGGER audit_events_no_update")
            db.execute(
                "UPDATE audit_events SET data = ? WHERE tenant_id = ? AND seq = ?",
                ('{"n":-1}', tenant_id.hex, seq),
            )
            db.commit()
        finally:
            db.close()
    else:
        conn = await asyncpg.connect(admin_dsn(settings.resolved_database_url.rsplit("/", 1)[1]))
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute(
                    "UPDATE audit_events SET data = '{\"n\": -1}' WHERE tenant_id = $1 AND seq = $2",
                    tenant_id,
                    seq,
                )
        finally:
            await conn.close()
    body = (await client.post("/v1/audit/verify", headers=tenant.headers)).json()
    assert body["ok"] is False
    failure = body["failure"]
    assert failure["seq"] == seq
    assert "altered" in failure["reason"]
    # The header, the entries before it, and one checkpoint per thousand of them.
    assert failure["line"] == 1 + seq + (seq - 1) // 1_000
