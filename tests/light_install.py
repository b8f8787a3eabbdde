"""``pip install aigos`` alone: a fresh virtual environment with the client lock and this package, built
once per test session and shared by the tests that need it (the SDK's, the offline verifier's)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LightInstall:
    """The environment's interpreter and scripts, and a runner with this checkout kept off its path."""

    venv: Path
    env: dict[str, str] = field(
        default_factory=lambda: {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("AIGOS_")
        }
    )

    @property
    def python(self) -> Path:
        """The environment's interpreter."""
        return self.venv / "bin" / "python"

    def script(self, name: str) -> Path:
        """A console script the package installed (``aigos``)."""
        return self.venv / "bin" / name

    def distributions(self) -> set[str]:
        """The normalised names of the distributions installed in the environment."""
        listed = self.run(
            self.python,
            "-c",
            "import importlib.metadata as m, re\n"
            "for d in m.distributions(): print(re.sub(r'[-_.]+', '-', d.metadata['Name']).lower())",
        )
        return set(listed.stdout.split())

    def run(self, *command: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``command`` with the environment's variables, from outside this checkout."""
        return subprocess.run(
            [str(part) for part in command],
            env=self.env,
            cwd=self.venv.parent,
            capture_output=True,
            text=True,
            check=check,
        )


def build(directory: Path) -> LightInstall:
    """Create the environment under ``directory`` and install the light package into it."""
    uv = ROOT / ".venv" / "bin" / "uv"
    light = LightInstall(directory / "light")
    light.run(uv, "venv", "--python", sys.executable, light.venv)
    light.run(uv, "pip", "install", "--python", light.python, "-r", ROOT / "requirements" / "client.lock")
    light.run(uv, "pip", "install", "--python", light.python, "--no-deps", ROOT)
    return light
