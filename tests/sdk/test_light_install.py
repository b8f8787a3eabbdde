"""``pip install aigos`` alone: the SDK imports no server package, and the seed's example runs from a fresh
virtual environment against a live server until a TERMINATE ends it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sdk.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
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
def test_light_install_imports_no_server_package_and_runs_the_quickstart(
    live: LiveServer, tmp_path: Path
) -> None:
    uv = ROOT / ".venv" / "bin" / "uv"
    venv = tmp_path / "light"
    python = venv / "bin" / "python"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("AIGOS_")
    }

    def run(*command: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(part) for part in command],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=check,
        )

    run(uv, "venv", "--python", sys.executable, venv)
    run(uv, "pip", "install", "--python", python, "-r", ROOT / "requirements" / "client.lock")
    run(uv, "pip", "install", "--python", python, "--no-deps", ROOT)

    for module in ("fastapi", "sqlalchemy", "redis", "aigos.server.app"):
        missing = run(python, "-c", f"import {module}", check=False)
        assert "ModuleNotFoundError" in missing.stderr, module
    probe = run(python, "-c", PROBE, check=False)
    assert probe.returncode == 0, probe.stderr
    assert "LOADED []" in probe.stdout, probe.stdout
    installed = run(python, "-c", "import aigos.sdk, pathlib; print(pathlib.Path(aigos.sdk.__file__))").stdout
    assert str(venv) in installed  # the wheel, not this checkout

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
