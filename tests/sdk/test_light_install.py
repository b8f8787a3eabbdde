"""``pip install aigos`` alone: the SDK imports no server package, and the seed's example runs from a fresh
virtual environment against a live server until a TERMINATE ends it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.light_install import ROOT, LightInstall
from tests.sdk.live import LiveServer

FORBIDDEN = (
    "fastapi",
    "sqlalchemy",
    "pydantic",
    "structlog",
    "redis",
    "starlette",
    "uvicorn",
    "aigos.server",
)
# What the command line once pulled in through typer; the light client is httpx, cryptography, orjson, click.
NOT_INSTALLED = {"pydantic", "pydantic-core", "rich", "pygments", "markdown-it-py", "typer", "fastapi"}
PROBE = f"""
import sys
import aigos.sdk
from aigos.sdk import AigosClient, AsyncAigosClient, guard, PolicyDenied, AgentTerminated
import aigos.sdk.integrations.langchain, aigos.sdk.integrations.openai_agents, aigos.sdk.integrations.mcp
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r} or m.startswith("aigos.server"))
print("LOADED", loaded)
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_light_install_has_no_pydantic_rich_or_pygments(light_install: LightInstall) -> None:
    installed = light_install.distributions()
    assert {"aigos", "click", "httpx", "cryptography", "orjson"} <= installed
    assert not installed & NOT_INSTALLED, sorted(installed & NOT_INSTALLED)
    help_text = light_install.run(light_install.script("aigos"), "--help").stdout
    assert "audit" in help_text


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_light_install_imports_no_server_package_and_runs_the_quickstart(
    live: LiveServer, light_install: LightInstall, tmp_path: Path
) -> None:
    run, python, env = light_install.run, light_install.python, light_install.env
    for module in ("fastapi", "sqlalchemy", "redis", "aigos.server.app"):
        missing = run(python, "-c", f"import {module}", check=False)
        assert "ModuleNotFoundError" in missing.stderr, module
    probe = run(python, "-c", PROBE, check=False)
    assert probe.returncode == 0, probe.stderr
    assert "LOADED []" in probe.stdout, probe.stdout
    installed = run(python, "-c", "import aigos.sdk, pathlib; print(pathlib.Path(aigos.sdk.__file__))").stdout
    assert str(light_install.venv) in installed  # the wheel, not this checkout

    process = subprocess.Popen(
        [str(python), str(ROOT / "examples" / "quickstart.py")],
        env={**env, "AIGOS_API_KEY": live.api_key, "AIGOS_BASE_URL": live.base_url},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("registered agent "), first + process.stdout.read()
        process.stdout.readline()  # denied as expected
        assert "guarded calls" in process.stdout.readline()
        live.trigger(first.split()[-1], "TERMINATE", "light install check")
        assert process.wait(15) == 0
        assert "done after" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
