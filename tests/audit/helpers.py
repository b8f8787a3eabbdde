"""What the event-log suites share: the database as the server opens it, events recorded and exported,
the stored chain read back and checked."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select

from aigos.core import auditlog, signing
from aigos.core.canonical import canonical
from aigos.core.signing import Signer, b64url
from aigos.server.audit import chain, checkpoints
from aigos.server.audit.events import NewEvent
from aigos.server.audit.models import AuditAnchor, AuditCheckpoint, AuditEvent
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import APP_ROLE
from aigos.server.db.migrate import upgrade
from tests.conftest import PG_ADMIN_DSN, embedded_settings, pg_url
from tests.helpers import TenantHandle
from tests.tcp_proxy import TcpProxy


async def open_database(settings: Settings) -> Database:
    """The test's database, migrated, as the server uses it (the application role on PostgreSQL)."""
    await upgrade(settings.resolved_migration_url)
    role = APP_ROLE if settings.database_kind == "postgresql" else None
    return Database(settings.resolved_database_url, role=role)


async def rename(client: AsyncClient, tenant: TenantHandle, name: str) -> None:
    """One ``tenant.updated`` event."""
    response = await client.put(f"/v1/tenants/{tenant.id}", json={"name": name}, headers=tenant.headers)
    assert response.status_code == 200, response.text


async def record(app: FastAPI, tenant: TenantHandle, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
    """Append ``count`` events straight through the server's event log (as agents' reports will be)."""
    values: dict[str, Any] = {"event_type": "agent.reported", "actor_type": "agent", "actor_id": "bot-1"}
    values.update(fields)
    return [
        await app.state.runtime.events.record(
            NewEvent(tenant_id=uuid.UUID(tenant.id), data={"n": n}, **values)
        )
        for n in range(count)
    ]


async def record_bulk(
    app: FastAPI, client: AsyncClient, tenant: TenantHandle, count: int, *, checkpoint_every: int = 1_000
) -> None:
    """Append ``count`` events in statements of a thousand (as a batch writer does), sealing a checkpoint
    each time the count passes a multiple of ``checkpoint_every``: a long log without a request per event."""
    runtime = app.state.runtime
    tenant_id = uuid.UUID(tenant.id)
    for start in range(0, count, 1_000):
        batch = [
            NewEvent(
                tenant_id=tenant_id,
                event_type="agent.reported",
                actor_type="agent",
                actor_id="bot-1",
                data={"n": n, "tool": "web.fetch"},
            )
            for n in range(start, min(start + 1_000, count))
        ]
        async with runtime.database.session(tenant_id) as session:
            await runtime.events.record_many(tenant_id, batch, session)
        if (start + len(batch)) // checkpoint_every > start // checkpoint_every:
            response = await client.get("/v1/audit/checkpoints/latest", headers=tenant.headers)
            assert response.status_code == 200, response.text


async def download(client: AsyncClient, headers: dict[str, str]) -> list[bytes]:
    """The lines of ``GET /v1/audit/export``."""
    response = await client.get("/v1/audit/export", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [line for line in response.content.split(b"\n") if line]


def records(lines: list[bytes]) -> list[dict[str, Any]]:
    """Parsed export lines."""
    return [orjson.loads(line) for line in lines]


async def published_keys(client: AsyncClient) -> dict[str, bytes]:
    """``GET /v1/audit/keys`` as a key-id-to-raw-key map."""
    body = (await client.get("/v1/audit/keys")).json()
    return {key["key_id"]: signing.unb64url(key["public_key"]) for key in body["keys"]}


def admin_dsn(database: str) -> str:
    """The asyncpg DSN of ``database`` as the test server's superuser."""
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


def sqlite_path(settings: Settings) -> str:
    """The file of the embedded database."""
    return str(settings.data_dir / "aigos.db")


def event(tenant_id: uuid.UUID, event_type: str = "test.happened", **fields: Any) -> NewEvent:
    """A system event of ``tenant_id``."""
    fields.setdefault("actor_type", "system")
    fields.setdefault("actor_id", "test")
    return NewEvent(tenant_id=tenant_id, event_type=event_type, **fields)


async def stored(database: Database, tenant_id: uuid.UUID) -> list[AuditEvent]:
    """The tenant's stored entries in sequence order."""
    async with database.session(tenant_id) as session:
        rows = await session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.seq)
        )
        return list(rows.all())


async def stored_checkpoints(database: Database, tenant_id: uuid.UUID) -> list[AuditCheckpoint]:
    """The tenant's checkpoints, smallest first."""
    async with database.session(tenant_id) as session:
        rows = await session.scalars(
            select(AuditCheckpoint)
            .where(AuditCheckpoint.tenant_id == tenant_id)
            .order_by(AuditCheckpoint.tree_size)
        )
        return list(rows.all())


def _line(record: dict[str, Any]) -> str:
    return canonical(record).decode()


async def export_lines(database: Database, tenant_id: uuid.UUID, signer: Signer) -> list[str]:
    """An NDJSON export built straight from the tables, as ``auditlog.verify_export`` reads it.

    With an anchor, it starts after the anchor (older rows possibly left in storage are not part of it).
    """
    async with database.session(tenant_id) as session:
        anchor = await session.get(AuditAnchor, tenant_id)
    start = anchor.seq if anchor is not None else 0
    rows = [row for row in await stored(database, tenant_id) if row.seq > start]
    sealed = {
        cp.tree_size: cp for cp in await stored_checkpoints(database, tenant_id) if cp.tree_size >= start
    }
    header: dict[str, Any] = {
        "kind": "header",
        "format": auditlog.EXPORT_FORMAT,
        "tenant_id": str(tenant_id),
        "keys": [{"key_id": signer.key_id, "public_key": b64url(signer.public_key)}],
        "anchor": None
        if anchor is None
        else {"seq": anchor.seq, "head_hash": anchor.head_hash, "compact_range": anchor.compact_range},
    }
    lines = [_line(header)]
    if start in sealed:
        lines.append(_line({"kind": "checkpoint", **checkpoints.to_json(sealed[start])}))
    for row in rows:
        lines.append(_line({"kind": "event", **chain.entry_of(row), "hash": row.hash}))
        if row.seq in sealed:
            lines.append(_line({"kind": "checkpoint", **checkpoints.to_json(sealed[row.seq])}))
    return lines


def trusted(signer: Signer) -> dict[str, bytes]:
    """The pinned key set of ``signer``."""
    return {signer.key_id: signer.public_key}


def assert_valid_log(lines: list[str], signer: Signer, count: int) -> auditlog.Report:
    """The export verifies against the pinned key and holds ``count`` entries ending at the last seq."""
    report = auditlog.verify_export(lines, trusted(signer))
    assert report.ok, report.failure
    assert report.entries == count
    return report


def proxied_settings(tmp_path: Path, pg_database: str, redis_prefix: str, proxy: TcpProxy) -> Settings:
    url = pg_url(pg_database).replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    return embedded_settings(
        tmp_path / "data",
        database_url=url,
        redis_url="redis://127.0.0.1:6379/0",
        redis_prefix=redis_prefix,
        ready_timeout_seconds=1.0,
        database_timeout_seconds=1.0,
        audit_flush_seconds=0.05,
    )
