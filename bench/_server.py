"""Start and stop the servers a benchmark measures, and read their memory and CPU use.

Every server is a subprocess on 127.0.0.1 (one worker unless asked for more), its output in a log file,
stopped with SIGTERM at the end (killed on error). Three kinds:

- ``aigos_server``: ``python -m aigos serve`` with the environment of one backend
  (``embedded_environment`` or ``postgres_environment``);
- ``floor_server``: ``bench/floor.py``'s bare ASGI app served by ``aigos serve``'s own launcher (same
  options, protocol class and worker count), the floor the policy, token and SDK benches compare against;
- ``baseline_server``: a bare FastAPI app with one ``GET /health`` under uvicorn's defaults plus the CLI's
  options, the reference of ``bench/http.py``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx
import psutil

HOST = "127.0.0.1"
PG_ADMIN_DSN = os.environ.get("AIGOS_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AIGOS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
LOG_LEVEL = "warning"

# The peer of ``aigos serve``: nothing but FastAPI and uvicorn, same uvicorn options as the CLI uses
# (one worker, no access log, no Server header), so the difference is AIGOS's own per-request cost.
BASELINE_APP = """
import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


uvicorn.run(
    app,
    host=sys.argv[1],
    port=int(sys.argv[2]),
    log_level="warning",
    access_log=False,
    server_header=False,
    proxy_headers=True,
)
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _process_tree(pid: int) -> list[psutil.Process]:
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` plus all its children, in bytes."""
    total = 0
    for process in _process_tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _role(process: psutil.Process, root: int) -> str:
    if process.pid == root:
        return "supervisor"
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "child"
    # uvicorn's workers are multiprocessing "spawn" children; so is multiprocessing's resource tracker.
    if "resource_tracker" in command:
        return "resource tracker"
    return "worker" if "multiprocessing" in command else "child"


def rss_by_process(pid: int) -> list[tuple[str, int, int]]:
    """``(role, pid, rss bytes)`` of process ``pid`` (role ``supervisor``) and each of its children.

    With one worker ``aigos serve`` runs the app in the supervisor itself (no child); with several, each
    worker is a child with role ``worker``.
    """
    rows = []
    for process in _process_tree(pid):
        try:
            rows.append((_role(process, pid), process.pid, process.memory_info().rss))
        except psutil.NoSuchProcess:
            continue
    return rows


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time used so far by process ``pid`` and its children."""
    total = 0.0
    for process in _process_tree(pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


# Run in a process of its own: reading /proc for a process tree takes about a millisecond, which, in the
# load client's event loop, would be added to whichever request was in flight (at c=1, every 50 ms).
_SAMPLER = """
import os, select, sys, psutil
os.nice(10)
pid, interval, peak = int(sys.argv[1]), float(sys.argv[2]), 0
while not select.select([sys.stdin], [], [], interval)[0]:
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        continue
    total = 0
    for process in tree:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    peak = max(peak, total)
print(peak, flush=True)
"""


class RssSampler:
    """Samples the resident memory of a process tree while a block runs, from a separate process.

    Use as ``async with RssSampler(pid) as sampler: ...``; afterwards ``sampler.peak_bytes`` is the
    largest sample (one is always taken on entry and one on exit, in this process).
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_bytes = 0
        self._sampler: asyncio.subprocess.Process | None = None

    def sample(self) -> None:
        """Take one sample now."""
        self.peak_bytes = max(self.peak_bytes, rss_bytes(self.pid))

    async def __aenter__(self) -> RssSampler:
        self.sample()
        self._sampler = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _SAMPLER,
            str(self.pid),
            str(self.interval),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sampler is not None:
            output, _ = await asyncio.wait_for(self._sampler.communicate(b"stop\n"), 30)
            if output.strip():
                self.peak_bytes = max(self.peak_bytes, int(output.strip()))
            self._sampler = None
        self.sample()


class ServerProcess:
    """One server subprocess on ``127.0.0.1:port``; its output goes to ``log_path``.

    ``with server:`` starts it and waits until ``GET /health`` answers 200; leaving the block sends
    SIGTERM (or kills it when the block raised, or when SIGTERM is not obeyed in time).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        clean_exit_codes: tuple[int, ...] = (0,),
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.cwd = cwd
        self.env = dict(env) if env is not None else dict(os.environ)
        self.log_path = cwd / f"{name}-{port}.log"
        self.clean_exit_codes = clean_exit_codes
        self.exit_code: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """PID of the running server."""
        if self._process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._process.pid

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start the process and wait until ``GET /health`` answers 200 (or fail after ``timeout``)."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_until_healthy(timeout)
        except BaseException:  # including Ctrl-C while waiting: never leave the process behind
            self.kill()
            raise
        return self

    def _wait_until_healthy(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        # trust_env=False: never route loopback probes through an HTTP(S)_PROXY from the environment.
        with httpx.Client(base_url=self.base_url, timeout=0.5, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self._process.returncode}:\n{self.output_tail()}"
                    )
                try:
                    if client.get("/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not answer /health within {timeout:.0f}s:\n{self.output_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """Send SIGTERM and wait for the exit code; kill the process if it still runs after ``timeout``."""
        if self._process is None:
            raise RuntimeError(f"{self.name} is not started")
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.exit_code = self._process.returncode
        return self.exit_code

    @property
    def stopped_cleanly(self) -> bool:
        """True once the process has exited with one of ``clean_exit_codes`` (not killed, not crashed)."""
        return self.exit_code in self.clean_exit_codes

    def kill(self) -> None:
        """Stop the process hard (the error path)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
            self.exit_code = self._process.returncode

    def output_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the process printed."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.kill()
        elif self._process is not None:
            self.stop()


def _clean_environ() -> dict[str, str]:
    """This process's environment without any ``AIGOS_*`` variable, so each backend sets its own."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AIGOS_")}


def aigos_server(
    workdir: Path, env: Mapping[str, str], *, name: str = "aigos", port: int | None = None, workers: int = 1
) -> ServerProcess:
    """``python -m aigos serve`` on a free port with ``workers`` workers, ``workdir`` as its cwd."""
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "aigos",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return ServerProcess(name, argv, port=port, cwd=workdir, env=env)


def floor_server(
    workdir: Path, env: Mapping[str, str], *, name: str = "floor", port: int | None = None, workers: int = 1
) -> ServerProcess:
    """``bench/floor.py``'s app through ``aigos serve``'s launcher, as ``aigos_server`` would start AIGOS.

    Give it the environment of the AIGOS server it stands beside (same backend settings, so the same
    launcher path: one process, or a supervisor with ``workers`` ``SO_REUSEPORT`` workers) and a
    ``workdir`` of its own (an embedded environment locks its data folder there).
    """
    port = port or free_port()
    repo = str(Path(__file__).resolve().parent.parent)
    path = env.get("PYTHONPATH")
    # The workers import ``bench.floor`` by name: the repository root must be on their path.
    env = {**env, "PYTHONPATH": repo + (os.pathsep + path if path else "")}
    argv = [sys.executable, "-m", "bench.floor", "serve", "--host", HOST, "--port", str(port)]
    argv += ["--workers", str(workers)]
    return ServerProcess(name, argv, port=port, cwd=workdir, env=env)


def baseline_server(workdir: Path, *, port: int | None = None) -> ServerProcess:
    """The bare FastAPI + uvicorn app (``BASELINE_APP``) on a free port, ``workdir`` as its cwd."""
    port = port or free_port()
    argv = [sys.executable, "-c", BASELINE_APP, HOST, str(port)]
    # After a graceful shutdown uvicorn re-raises the SIGTERM it caught, so a clean stop of the bare app
    # reads as "killed by SIGTERM" (``aigos serve`` installs no-op handlers and exits 0 instead).
    return ServerProcess(
        "baseline",
        argv,
        port=port,
        cwd=workdir,
        env=_clean_environ(),
        clean_exit_codes=(0, -signal.SIGTERM),
    )


@contextmanager
def embedded_environment() -> Iterator[dict[str, str]]:
    """Environment of an embedded server: no database or Redis settings (SQLite under ``./.aigos/``).

    Run the server with a fresh temporary directory as its cwd so the state starts empty.
    """
    yield {**_clean_environ(), "AIGOS_LOG_LEVEL": LOG_LEVEL}


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _redis_delete_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextmanager
def postgres_environment() -> Iterator[dict[str, str]]:
    """Environment of a PostgreSQL + Redis server, on a fresh database and a fresh Redis key prefix.

    Creates ``aigos_bench_<random>`` on the local PostgreSQL (the server migrates it on start) and, on
    exit, drops it ``WITH (FORCE)`` and deletes every Redis key under the prefix. Stop the server first.
    """
    token = secrets.token_hex(6)
    database = f"aigos_bench_{token}"
    prefix = f"aigosbench:{token}:"
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    asyncio.run(_pg_admin(f'CREATE DATABASE "{database}"'))
    try:
        yield {
            **_clean_environ(),
            "AIGOS_LOG_LEVEL": LOG_LEVEL,
            "AIGOS_DATABASE_URL": f"{base}/{database}",
            "AIGOS_REDIS_URL": REDIS_URL,
            "AIGOS_REDIS_PREFIX": prefix,
            "AIGOS_SECRET_KEY": secrets.token_urlsafe(36),  # 48 characters
            # Replicas behind one address name one issuer (clients may reach them on several ports).
            "AIGOS_ISSUER": "https://aigos.bench",
        }
    finally:
        try:
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        finally:
            asyncio.run(_redis_delete_prefix(prefix))
