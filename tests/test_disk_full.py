"""A full disk under the embedded backend: writes answer 503 STORAGE_FULL, every connection gets an answer,
readiness says not ready until space is freed, and nothing answered 201 is lost.

The data folder of a real ``aigos serve`` is a small tmpfs the test fills (mounting needs root: skipped
with the reason elsewhere). The server's log is kept off it, as an operator's would be.
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fault_load import LOAD_ENV, Tally, enterprise_tenant, missing_agents, register_agents
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow

DISK_SIZE = "24m"
SHED = {"STORAGE_FULL", "OVERLOADED", "DEADLINE_EXCEEDED", "DATABASE_BUSY"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of ``DISK_SIZE`` mounted for this test."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its file system is full; returns the file."""
    filler = folder / "filler"
    chunk = bytes(64 * 1024)
    with filler.open("wb", buffering=0) as out, pytest.raises(OSError) as full:
        while True:
            out.write(chunk)
    assert full.value.errno == errno.ENOSPC
    return filler


async def readiness(base_url: str) -> httpx.Response:
    """``GET /health/ready``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10, trust_env=False) as client:
        return await client.get("/health/ready")


async def test_a_full_disk_answers_503_storage_full_and_loses_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    env = {**LOAD_ENV, "AIGOS_DATA_DIR": str(small_disk / "data")}
    server = ServerProcess(tmp_path / "work", env)
    await asyncio.to_thread(server.start)
    try:
        headers = await enterprise_tenant(server.base_url)
        before = await register_agents(server.base_url, headers, clients=8, requests=40, client_timeout=30)
        assert before.outcomes == {"201": 40}

        filler = await asyncio.to_thread(fill, small_disk)
        full = await register_agents(server.base_url, headers, clients=16, requests=200, client_timeout=30)
        not_ready = await readiness(server.base_url)

        filler.unlink()
        ready = await readiness(server.base_url)
        after = await register_agents(server.base_url, headers, clients=8, requests=40, client_timeout=30)
        created = before.created + full.created + after.created
        missing = await missing_agents(server.base_url, headers, created)
    finally:
        server.kill()

    every = Tally(before.outcomes + full.outcomes + after.outcomes, created)
    # Every request answered, none with a 500; a full disk is told as such, with when to come back.
    assert every.errors == 0, every.outcomes
    assert every.unanswered == 0, every.outcomes
    assert full.count("503 STORAGE_FULL") > 0, full.outcomes
    assert {outcome.split(" ", 1)[1] for outcome in full.outcomes if outcome.startswith("503")} <= SHED
    assert full.without_retry_after == 0
    # Not ready while full (the probe writes); ready again, and writing, once space is freed.
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["database"] == "full"
    assert ready.status_code == 200
    assert after.outcomes == {"201": 40}
    # Nothing acknowledged is missing.
    assert missing == []
