"""Row-level security in the database itself, as the application role: the wall under the service code."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text

from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import APP_ROLE, set_platform_scope, set_tenant
from tests.conftest import REDIS_URL, embedded_settings, pg_url
from tests.helpers import TenantHandle

TENANT_OWNED = {
    "tenants": "id",
    "tenant_members": "tenant_id",
    "api_keys": "tenant_id",
    "usage_daily": "tenant_id",
}


@pytest.fixture
def settings(tmp_path: Path, pg_database: str, redis_prefix: str) -> Settings:
    """PostgreSQL only: row-level security is a PostgreSQL feature (on SQLite the services scope queries)."""
    return embedded_settings(
        tmp_path, database_url=pg_url(pg_database), redis_url=REDIS_URL, redis_prefix=redis_prefix
    )


@pytest.fixture
async def app_db(settings: Settings) -> AsyncIterator[Database]:
    """A connection pool acting as the application role, like the server's."""
    database = Database(settings.resolved_database_url, role=APP_ROLE)
    yield database
    await database.dispose()


async def _seed_usage(client: AsyncClient, app: FastAPI, *tenants: TenantHandle) -> None:
    for tenant in tenants:
        assert (await client.get(f"/v1/tenants/{tenant.id}", headers=tenant.headers)).status_code == 200
    await app.state.runtime.usage.flush()


async def test_tenant_context_shows_only_that_tenant(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle, tenant_b: TenantHandle, app_db: Database
) -> None:
    await _seed_usage(client, app, tenant_a, tenant_b)
    async with app_db.session(uuid.UUID(tenant_a.id)) as session:
        for table, column in TENANT_OWNED.items():
            owners = set((await session.execute(text(f"SELECT DISTINCT {column} FROM {table}"))).scalars())
            assert owners == {uuid.UUID(tenant_a.id)}, table


async def test_no_context_shows_nothing(
    client: AsyncClient, app: FastAPI, tenant_a: TenantHandle, tenant_b: TenantHandle, app_db: Database
) -> None:
    await _seed_usage(client, app, tenant_a, tenant_b)
    async with app_db.session() as session:
        for table in TENANT_OWNED:
            assert await session.scalar(text(f"SELECT count(*) FROM {table}")) == 0, table


async def test_cannot_write_into_another_tenant(
    tenant_a: TenantHandle, tenant_b: TenantHandle, app_db: Database
) -> None:
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError, match="row-level security"):
        async with app_db.session(uuid.UUID(tenant_a.id)) as session:
            await session.execute(
                text("UPDATE tenants SET name = 'pwned' WHERE id = :id"), {"id": tenant_b.id}
            )
            await session.execute(
                text(
                    "INSERT INTO tenant_members (tenant_id, user_id, role, created_at, updated_at) "
                    "VALUES (:t, :u, 'owner', now(), now())"
                ),
                {"t": tenant_b.id, "u": tenant_a.owner_id},
            )
    async with app_db.session(uuid.UUID(tenant_b.id)) as session:
        assert await session.scalar(text("SELECT name FROM tenants")) == "Beta"


async def test_platform_scope_reads_all_but_writes_none(
    tenant_a: TenantHandle, tenant_b: TenantHandle, app_db: Database
) -> None:
    async with app_db.session() as session:
        await set_platform_scope(session)
        assert await session.scalar(text("SELECT count(*) FROM tenants")) == 2
        result = await session.execute(text("UPDATE tenants SET name = 'x'"))
        assert result.rowcount == 0  # type: ignore[attr-defined]


async def test_app_role_cannot_bypass(app_db: Database) -> None:
    async with app_db.session() as session:
        role = await session.scalar(text("SELECT current_user"))
        bypass = await session.scalar(
            text("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user")
        )
        assert role == APP_ROLE
        assert bypass is False
        forced = (
            await session.execute(
                text(
                    "SELECT relname FROM pg_class "
                    "WHERE relrowsecurity AND relforcerowsecurity AND relname = ANY(:t)"
                ),
                {"t": list(TENANT_OWNED)},
            )
        ).scalars()
        assert set(forced) == set(TENANT_OWNED)


async def test_set_tenant_is_transaction_local(tenant_a: TenantHandle, app_db: Database) -> None:
    async with app_db.session() as session:
        await set_tenant(session, uuid.UUID(tenant_a.id))
        assert await session.scalar(text("SELECT count(*) FROM tenants")) == 1
    async with app_db.session() as session:
        assert await session.scalar(text("SELECT count(*) FROM tenants")) == 0


async def test_users_show_only_the_tenants_members_and_never_a_hash(
    tenant_a: TenantHandle, tenant_b: TenantHandle, app_db: Database
) -> None:
    from sqlalchemy.exc import DBAPIError

    async with app_db.session() as session:
        assert await session.scalar(text("SELECT count(*) FROM users")) == 0
        await set_platform_scope(session)
        assert await session.scalar(text("SELECT count(*) FROM users")) == 0
    async with app_db.session(uuid.UUID(tenant_a.id)) as session:
        emails = set((await session.execute(text("SELECT email FROM users"))).scalars())
        assert emails == {tenant_a.owner_email}
        # Only the tenant's own member, by exact address, through the sign-in look-up.
        found = (
            await session.execute(
                text("SELECT * FROM aigos_member_password(:e)"), {"e": tenant_a.owner_email}
            )
        ).all()
        assert len(found) == 1
        other = text("SELECT * FROM aigos_member_password(:e)")
        assert (await session.execute(other, {"e": tenant_b.owner_email})).all() == []
    with pytest.raises(DBAPIError, match="permission denied"):
        async with app_db.session(uuid.UUID(tenant_a.id)) as session:
            await session.execute(text("SELECT password_hash FROM users"))


async def test_platform_tables_are_not_readable_by_the_app_role(app_db: Database) -> None:
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError, match="permission denied"):
        async with app_db.session() as session:
            await session.execute(text("SELECT token_hash FROM platform_tokens"))
    async with app_db.session() as session:
        forced = (
            await session.execute(
                text(
                    "SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity "
                    "AND relname IN ('users', 'platform_tokens', 'signing_keys')"
                )
            )
        ).scalars()
        assert set(forced) == {"users", "platform_tokens", "signing_keys"}


async def test_platform_scope_shows_no_credentials(
    tenant_a: TenantHandle, tenant_b: TenantHandle, app_db: Database
) -> None:
    async with app_db.session() as session:
        await set_platform_scope(session)
        for table in ("api_keys", "tenant_members", "agent_credentials", "invitations", "user_sessions"):
            assert await session.scalar(text(f"SELECT count(*) FROM {table}")) == 0, table
