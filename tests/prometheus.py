"""A real Prometheus (Debian's package, installed by ``scripts/promtool``) scraping a test's server."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from tests.server_process import free_port

ROOT = Path(__file__).resolve().parent.parent


class Prometheus:
    """``prometheus`` scraping ``target`` (host:port) every second, with AIGOS's alerting rules loaded."""

    def __init__(self, workdir: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        assert binary is not None, "prometheus is not installed: run scripts/promtool"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
            "scrape_configs": [{"job_name": "aigos", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.argv = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        self.until(lambda: httpx.get(self.base_url + "/-/ready").status_code == 200, "ready")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        body = httpx.get(self.base_url + "/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        """The loaded alerting rules, with their health."""
        groups = httpx.get(self.base_url + "/api/v1/rules").json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def until(self, done: Any, what: str, within: float = 30.0) -> None:
        """Wait until ``done()`` holds (connection errors count as not yet)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus: never {what}:\n{self.log.read_text(errors='replace')[-3000:]}")
