"""The ``aigos`` command: version, openapi (and the spec's drift check), migrate, serve's refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from aigos import __version__
from aigos.cli import app
from aigos.server.app import create_app
from tests.conftest import embedded_settings

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
REGENERATE = "aigos openapi -o docs/openapi.yaml"


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__


def test_docs_openapi_matches_the_app(tmp_path: Path) -> None:
    """docs/openapi.yaml is generated; when this fails, run the command in the message and commit."""
    spec = create_app(embedded_settings(tmp_path)).openapi()
    committed = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    assert committed == spec, f"docs/openapi.yaml is out of date: run `{REGENERATE}`"


def test_openapi_command_prints_yaml_and_json(tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setenv("AIGOS_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["openapi"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["info"]["title"] == "AIGOS"
    out = tmp_path / "spec.json"
    result = runner.invoke(app, ["openapi", "--format", "json", "-o", str(out)])
    assert result.exit_code == 0
    assert '"openapi"' in out.read_text()


def test_migrate_command(tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setenv("AIGOS_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "database at revision" in result.output
    assert (tmp_path / "aigos.db").exists()


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "aigos", "serve", *args],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_embedded_mode_refuses_several_workers(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--workers", "2")
    assert result.returncode == 2
    assert "embedded mode" in result.stderr
    assert "AIGOS_DATABASE_URL" in result.stderr


def test_postgres_without_redis_is_still_embedded(tmp_path: Path) -> None:
    result = _serve(
        tmp_path,
        "--workers",
        "2",
        AIGOS_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1/test",
        AIGOS_SECRET_KEY="k" * 40,
        AIGOS_ISSUER="https://aigos.example.com",
    )
    assert result.returncode == 2
    assert "memory bus" in result.stderr


def test_several_workers_on_a_taken_port_are_refused_at_once(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _serve(
            tmp_path,
            "--workers",
            "2",
            "--port",
            str(taken.getsockname()[1]),
            AIGOS_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1/test",
            AIGOS_REDIS_URL="redis://127.0.0.1:6379/0",
            AIGOS_SECRET_KEY="k" * 40,
            AIGOS_ISSUER="https://aigos.example.com",
            AIGOS_MIGRATE_ON_START="false",
        )
    assert result.returncode == 2
    assert "cannot listen on 127.0.0.1" in result.stderr


def test_invalid_configuration_is_explained(tmp_path: Path) -> None:
    result = _serve(tmp_path, AIGOS_DATABASE_URL="mysql://nope", AIGOS_MAX_BODY_BYTES="tiny")
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr
    assert "max_body_bytes" in result.stderr


def test_postgres_without_secret_key_is_explained(tmp_path: Path) -> None:
    result = _serve(
        tmp_path, AIGOS_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1/test", AIGOS_SECRET_KEY=""
    )
    assert result.returncode == 2
    assert "AIGOS_SECRET_KEY is required" in result.stderr


def test_postgres_without_issuer_is_refused_at_start(tmp_path: Path) -> None:
    result = _serve(
        tmp_path,
        AIGOS_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1/test",
        AIGOS_REDIS_URL="redis://127.0.0.1:6379/0",
        AIGOS_SECRET_KEY="k" * 40,
        AIGOS_ISSUER="",
    )
    assert result.returncode == 2
    assert "AIGOS_ISSUER is required with PostgreSQL" in result.stderr


def test_the_cli_imports_no_server_package_until_a_server_command_runs() -> None:
    """Every command module loads with ``aigos``; only running a server command imports the server (the
    light install has none)."""
    probe = (
        "import sys; from aigos.cli import app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'sqlalchemy', 'pydantic')"
        " or m.startswith('aigos.server')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
