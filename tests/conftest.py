"""Fixtures: every API test runs against both backends, each test on its own fresh database.

- ``embedded``: SQLite in the test's tmp dir and the in-process bus.
- ``postgres``: a new PostgreSQL database cloned from a migrated template, and Redis under a unique prefix.

The fixtures every suite shares live here (tenants, replica processes, a PostgreSQL proxy, the light
install); a context's own conftest holds only what that context alone uses, and helpers that are not
fixtures live in ``tests/helpers.py`` and each context's ``helpers.py``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from aigos.server.app import create_app
from aigos.server.config import Settings
from aigos.server.db.migrate import upgrade
from tests.helpers import TenantHandle, signup
from tests.killswitch.helpers import Live
from tests.light_install import LightInstall
from tests.light_install import build as build_light_install
from tests.live import serving
from tests.server_process import ServerProcess
from tests.tcp_proxy import TcpProxy

PG_ADMIN_DSN = os.environ.get("AIGOS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AIGOS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET_KEY = "test-secret-key-0123456789abcdef-0123456789"
ADMIN_TOKEN = "aigos_pat_test_" + "x" * 40
BACKENDS = ["embedded", "postgres"]
# Owners' passwords are hashed at every signup: at the production cost (64 MiB, ~120 ms) that alone would
# take minutes of the suite. Set in the environment so server processes started by tests inherit it.
os.environ.setdefault("AIGOS_PASSWORD_HASH_MEMORY_KIB", "1024")
os.environ.setdefault("AIGOS_PASSWORD_HASH_TIME_COST", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start server processes first (in their order): the workers then end the run on short
    tests, rather than one worker on a long one while the others wait."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pg_url(database: str) -> str:
    """SQLAlchemy URL of ``database`` on the test server."""
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A PostgreSQL database migrated to head once per session; tests clone it."""
    import asyncio

    name = f"aigos_tmpl_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    asyncio.run(upgrade(pg_url(name)))
    asyncio.run(_remember_fingerprint(name))
    yield name
    for emptied in [*_EMPTIED, name]:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{emptied}" WITH (FORCE)'))
    _EMPTIED.clear()


# What a test may change in a database besides its rows: if any of it differs from the template's after
# a test, the database is dropped rather than emptied for the next one.
_SCHEMA_FINGERPRINT = """
SELECT md5(string_agg(item, ',' ORDER BY item)) FROM (
    SELECT 'c:' || c.relname || ':' || c.relkind::text || ':' || c.relnatts || ':' || c.relrowsecurity::text
        || c.relforcerowsecurity::text
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
    UNION ALL SELECT 't:' || tgname || ':' || tgenabled::text FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'p:' || tablename || ':' || policyname || ':' || coalesce(qual, '') FROM pg_policies
    UNION ALL SELECT 'f:' || p.proname || ':' || md5(p.prosrc)
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
    UNION ALL SELECT 'v:' || version_num FROM alembic_version
) AS schema(item)
"""
#: Emptied databases of this test process, ready for the next test.
_EMPTIED: list[str] = []
_TEMPLATE_FINGERPRINT: dict[str, str] = {}


def _database_dsn(name: str) -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


async def _remember_fingerprint(template: str) -> None:
    conn = await asyncpg.connect(_database_dsn(template))
    try:
        _TEMPLATE_FINGERPRINT[template] = await conn.fetchval(_SCHEMA_FINGERPRINT)
    finally:
        await conn.close()


async def _empty(name: str, template: str) -> bool:
    """Delete every row of database ``name``; False if the test changed more than rows (or it failed)."""
    await _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )
    try:
        conn = await asyncpg.connect(_database_dsn(name))
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        if await conn.fetchval(_SCHEMA_FINGERPRINT) != _TEMPLATE_FINGERPRINT.get(template):
            return False
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS name FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        sequences = await conn.fetch("SELECT quote_ident(sequencename) AS name FROM pg_sequences")
        async with conn.transaction():
            # Past the append-only triggers and foreign keys: every row goes.
            await conn.execute("SET LOCAL session_replication_role = replica")
            for table in tables:
                await conn.execute(f"DELETE FROM {table['name']}")
            for sequence in sequences:
                await conn.execute(f"SELECT setval('{sequence['name']}', 1, false)")
        return True
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


@pytest.fixture
async def pg_database(pg_template: str) -> AsyncIterator[str]:
    """A database for one test, as the template left it: a fresh clone, or one an earlier test of this
    process used, emptied (a ``CREATE DATABASE`` costs ~0.5 s, most of it PostgreSQL's CPU; emptying a few
    milliseconds). A test that changed more than rows leaves its database dropped."""
    if _EMPTIED:
        name = _EMPTIED.pop()
    else:
        name = f"aigos_t_{uuid.uuid4().hex[:12]}"
        await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield name
    if await _empty(name, pg_template):
        _EMPTIED.append(name)
    else:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix for one test; every key under it is deleted afterwards."""
    prefix = f"aigostest:{uuid.uuid4().hex}:"
    yield prefix
    await _forget_redis_prefix(prefix)


def embedded_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an embedded server whose state lives in ``data_dir``."""
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": data_dir,
        "secret_key": SECRET_KEY,
        "bootstrap_admin_token": ADMIN_TOKEN,
        "log_level": "warning",
        **overrides,
    }
    if "database_url" in overrides:
        # PostgreSQL servers need an issuer: the address the in-process test client uses.
        values.setdefault("issuer", "http://testserver")
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded database migrated to head once per session; each test starts from a copy of it (a
    migration from nothing costs ~0.15 s of CPU per start, the copy a millisecond)."""
    import asyncio

    folder = tmp_path_factory.mktemp("sqlite-template")
    asyncio.run(upgrade(f"sqlite+aiosqlite:///{(folder / 'aigos.db').as_posix()}"))
    return folder


def seeded_data_dir(template: Path, data_dir: Path) -> Path:
    """``data_dir`` holding a copy of the migrated ``template`` database, private as the server keeps it."""
    data_dir.mkdir(mode=0o700, parents=True)
    for path in template.glob("aigos.db*"):
        shutil.copyfile(path, data_dir / path.name)
    return data_dir


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Server settings for one backend, with state isolated to this test."""
    if request.param == "embedded":
        template = request.getfixturevalue("sqlite_template")
        return embedded_settings(seeded_data_dir(template, tmp_path / "data"))
    # Requested lazily so embedded-only runs never touch PostgreSQL or Redis.
    database = request.getfixturevalue("pg_database")
    prefix = request.getfixturevalue("redis_prefix")
    return embedded_settings(
        tmp_path / "data", database_url=pg_url(database), redis_url=REDIS_URL, redis_prefix=prefix
    )


@pytest.fixture
def backend(settings: Settings) -> str:
    """``embedded`` or ``postgres``."""
    return "embedded" if settings.database_kind == "sqlite" else "postgres"


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    """The application for this test's backend, not yet started."""
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    """An HTTP client talking to the started app in-process."""
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://testserver") as http,
    ):
        yield http


@pytest.fixture
def admin_headers() -> dict[str, str]:
    """Authorization for the platform-admin token the test servers are bootstrapped with."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def replica_env(pg_database: str, redis_prefix: str) -> dict[str, str]:
    """Environment for ``aigos serve`` processes that behave as replicas: one database, one Redis."""
    return replica_environment(pg_database, redis_prefix)


def replica_environment(database: str, redis_prefix: str) -> dict[str, str]:
    """``replica_env`` for a given database and Redis prefix."""
    return {
        "AIGOS_DATABASE_URL": pg_url(database),
        "AIGOS_REDIS_URL": REDIS_URL,
        "AIGOS_REDIS_PREFIX": redis_prefix,
        "AIGOS_SECRET_KEY": SECRET_KEY,
        "AIGOS_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
        # Replicas behind one address name one issuer.
        "AIGOS_ISSUER": "https://aigos.example.com",
    }


@pytest.fixture(scope="session")
def light_install(tmp_path_factory: pytest.TempPathFactory) -> LightInstall:
    """``pip install aigos`` alone, in a virtual environment built once per session."""
    return build_light_install(tmp_path_factory.mktemp("light-install"))


@pytest.fixture
async def tenant_a(client: AsyncClient) -> TenantHandle:
    """One tenant."""
    return await signup(client, "Alpha")


@pytest.fixture
async def tenant_b(client: AsyncClient) -> TenantHandle:
    """Another tenant."""
    return await signup(client, "Beta")


@pytest.fixture
def processes(tmp_path: Path, replica_env: dict[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two ``aigos serve`` processes on one PostgreSQL and one Redis, as replicas behind one address."""
    with (
        ServerProcess(tmp_path / "one", replica_env) as one,
        ServerProcess(tmp_path / "two", replica_env) as two,
    ):
        yield one, two


@pytest.fixture(scope="module")
def shared_processes(
    pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """``processes`` shared by a module's tests: for tests that each work in tenants of their own and leave
    both processes running (a server start costs seconds of CPU)."""
    import asyncio

    database = f"aigos_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{database}" TEMPLATE "{pg_template}"'))
    prefix = f"aigostest:{uuid.uuid4().hex}:"
    env = replica_environment(database, prefix)
    workdir = tmp_path_factory.mktemp("shared-processes")
    try:
        with ServerProcess(workdir / "one", env) as one, ServerProcess(workdir / "two", env) as two:
            yield one, two
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        asyncio.run(_forget_redis_prefix(prefix))


async def _forget_redis_prefix(prefix: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    """A proxy in front of the shared PostgreSQL, for one test."""
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def live(app: FastAPI, settings: Settings) -> AsyncIterator[Live]:
    """The test's app served by uvicorn (``serving``), with short kill-switch keep-alives."""
    # The app reads its settings object when it starts.
    settings.killswitch_keepalive_seconds = 0.3
    async with serving(app) as served:
        yield served
