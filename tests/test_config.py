"""Configuration: defaults, validation, and the documentation of every variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from aigos.server.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
CLI_VARIABLES = {"AIGOS_HOST", "AIGOS_PORT", "AIGOS_WORKERS"}


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def all_variables() -> set[str]:
    return {f"AIGOS_{name.upper()}" for name in Settings.model_fields} | CLI_VARIABLES


def test_defaults_are_embedded(tmp_path: Path) -> None:
    config = settings(data_dir=tmp_path)
    assert config.database_kind == "sqlite"
    assert config.bus_kind == "memory"
    assert config.embedded
    assert config.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path.as_posix()}/aigos.db"


def test_embedded_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = settings(data_dir=data).pepper
    again = settings(data_dir=data).pepper
    assert first == again
    assert len(first) >= 32
    assert (data / "secret.key").stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700


def test_postgres_requires_a_secret_key(tmp_path: Path) -> None:
    config = settings(data_dir=tmp_path, database_url="postgresql+asyncpg://u@h/db", redis_url="redis://h")
    assert not config.embedded
    with pytest.raises(ConfigError, match="AIGOS_SECRET_KEY"):
        _ = config.pepper


def test_postgres_requires_an_issuer(tmp_path: Path) -> None:
    config = settings(data_dir=tmp_path, database_url="postgresql+asyncpg://u@h/db", redis_url="redis://h")
    with pytest.raises(ConfigError, match="AIGOS_ISSUER is required with PostgreSQL"):
        config.check_issuer()
    issued = settings(database_url="postgresql+asyncpg://u@h/db", issuer="https://aigos.example.com")
    issued.check_issuer()
    assert issued.issuer_notice is None


def test_embedded_mode_derives_the_issuer_and_says_so(tmp_path: Path) -> None:
    config = settings(data_dir=tmp_path)
    config.check_issuer()
    assert config.issuer_notice is not None
    assert "AIGOS_ISSUER is not set" in config.issuer_notice


@pytest.mark.parametrize(
    "issuer",
    ["aigos.example.com", "ftp://aigos.example.com", "https://", "https://a.example/?x=1", "https://a#b"],
)
def test_issuer_must_be_an_http_url_without_query_or_fragment(issuer: str) -> None:
    with pytest.raises(ValidationError, match="AIGOS_ISSUER"):
        settings(issuer=issuer)


def test_unknown_database_scheme_is_refused() -> None:
    with pytest.raises(ValidationError, match="AIGOS_DATABASE_URL"):
        settings(database_url="mysql://x/y")


def test_short_secret_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        settings(secret_key="short")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGOS_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("AIGOS_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("AIGOS_SECRET_KEY", "")  # empty means unset
    config = Settings(_env_file=None)  # type: ignore[call-arg]
    assert config.cors_origins == ["https://a.example", "https://b.example"]
    assert config.max_body_bytes == 2048
    assert config.secret_key is None


def test_env_example_lists_every_variable_with_its_default() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = dict(re.findall(r"^(AIGOS_[A-Z_]+)=(.*)$", text, flags=re.M))
    assert set(listed) == all_variables()
    defaults = Settings.model_fields
    for name, value in listed.items():
        field = defaults.get(name.removeprefix("AIGOS_").lower())
        if field is None or field.default_factory is not None:
            continue
        expected = field.default
        if expected is None:
            assert value == "", name
        elif isinstance(expected, bool):
            assert value == str(expected).lower(), name
        else:
            assert value == str(expected), name


def test_readme_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in sorted(all_variables()) if name not in readme]
    assert missing == []
