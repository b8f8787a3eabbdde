"""Kill switch, in one process: what a fan-out to many open streams of one replica costs, and the event
loop's longest pause while it runs.

An embedded server (uvicorn with ``aigos serve``'s HTTP protocol, uvloop when installed) runs in this
process; N streams of one agent are opened over bare sockets (the per-agent bound lifted), then one
command is triggered for that agent. Printed: the trigger's answer time, the time until the command was
written to every stream, the CPU time per stream, and the loop's longest pause during the fan-out (a 1 ms
ticker; the target is no pause of 50 ms or more). The sockets are not read during the fan-out, so the
client costs the loop nothing then; afterwards every stream is read until its frame arrived.

Run: ``.venv/bin/python bench/killswitch_fanout.py [--streams 9000]`` (each stream takes two file
descriptors here, so N is bounded by half the open-file hard limit).
"""

# ruff: noqa: E402 - the bench directory must leave sys.path before anything imports the stdlib's ``token``.

from __future__ import annotations

import sys
from pathlib import Path

_BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import asyncio
import os
import resource
import secrets
import socket
import tempfile
import time

import httpx
import uvicorn

from aigos.server.app import create_app
from aigos.server.config import Settings
from aigos.server.http_protocol import protocol_path
from aigos.server.loop_lag import LoopLag
from bench._server import HOST, free_port

TARGET_PAUSE_MS = 50.0


async def open_stream(port: int, token: str) -> socket.socket:
    """A stream over a bare socket, once its ``opened`` event arrived."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, (HOST, port))
    request = (
        f"GET /v1/kill-switch/stream HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    received = b""
    while b"event: opened" not in received:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise RuntimeError(f"stream refused: {received[:60]!r}")
        received += chunk
    return sock


async def open_retrying(port: int, token: str) -> socket.socket:
    """``open_stream``, again after a pause while the server sheds load (503)."""
    for _ in range(60):
        try:
            return await open_stream(port, token)
        except RuntimeError as exc:
            if " 503 " not in str(exc):
                raise
        await asyncio.sleep(0.5)
    raise RuntimeError("stream refused: 503 sixty times")


async def read_frame(sock: socket.socket) -> None:
    """Read until the stream's ``event: kill-switch`` frame arrived."""
    loop = asyncio.get_running_loop()
    tail = b""
    while True:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise RuntimeError("the stream ended first")
        if b"event: kill-switch" in tail + chunk:
            return
        tail = chunk[-32:]


async def run(streams: int, workdir: Path) -> None:
    """Open ``streams`` streams of one agent, trigger one command, print the figures."""
    admin = "aigos_pat_bench_" + secrets.token_urlsafe(32)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=workdir,
        secret_key=secrets.token_urlsafe(36),
        bootstrap_admin_token=admin,
        log_level="warning",
        default_rate_limit_rpm=10_000_000,
        default_rate_limit_rph=100_000_000,
    )
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host=HOST, port=port, log_config=None, lifespan="on", http=protocol_path())
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    hub = app.state.runtime.killswitch
    hub.max_streams_per_agent = streams
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=60.0, trust_env=False) as http:
        signup = await http.post(
            "/v1/tenants",
            json={
                "name": "Bench",
                "slug": f"bench-{secrets.token_hex(4)}",
                "owner_email": f"bench-{secrets.token_hex(4)}@example.com",
                "owner_password": "correct horse battery staple",
                "plan_tier": "enterprise",
            },
            headers={"Authorization": f"Bearer {admin}"},
        )
        signup.raise_for_status()
        owner = {"Authorization": f"Bearer {signup.json()['api_key']['key']}"}
        agent = (await http.post("/v1/agents/register", json={"name": "fleet"}, headers=owner)).json()
        started = time.perf_counter()
        socks: list[socket.socket] = []
        for first in range(0, streams, 20):
            batch = range(first, min(first + 20, streams))
            socks += await asyncio.gather(*(open_retrying(port, agent["identity_token"]) for _ in batch))
        opened = time.perf_counter() - started
        lag = LoopLag(tick=0.001)
        lag.start()
        await asyncio.sleep(0.2)
        lag.take_worst()
        cpu, sent = time.process_time(), time.perf_counter()
        response = await http.post(
            "/v1/kill-switch/trigger",
            json={"agent_id": agent["agent_id"], "command": "PAUSE", "reason": "bench"},
            headers=owner,
        )
        answered = time.perf_counter()
        response.raise_for_status()
        while True:  # the hub writes a slice per turn of the loop
            if not hub.fanning_out:
                break
            await asyncio.sleep(0)
        written, cpu = time.perf_counter(), time.process_time() - cpu
        pause = lag.take_worst()
        await lag.stop()
        await asyncio.wait_for(asyncio.gather(*(read_frame(sock) for sock in socks)), 120)
        print(f"== {streams} streams of one agent, one replica (opened in {opened:.1f} s)")
        print(f"trigger answered:            {(answered - sent) * 1000:.1f} ms")
        print(f"written to every stream:     {(written - sent) * 1000:.1f} ms after the trigger was sent")
        print(f"CPU per stream:              {cpu / streams * 1e6:.1f} us (trigger included)")
        verdict = "ok" if pause * 1000 < TARGET_PAUSE_MS else "OVER"
        print(f"longest loop pause:          {pause * 1000:.1f} ms  ", end="")
        print(f"(target < {TARGET_PAUSE_MS:g} ms: {verdict})")
        print(f"every stream read its frame: {len(socks)}")
        for sock in socks:
            sock.close()
    hub.begin_close()
    server.should_exit = True
    await asyncio.wait_for(task, 60)


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=5_000, help="Streams to open.")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ.setdefault("AIGOS_PASSWORD_HASH_MEMORY_KIB", "1024")
    with tempfile.TemporaryDirectory(prefix="aigos-bench-fanout-") as tmp:
        try:
            import uvloop
        except ImportError:
            asyncio.run(run(args.streams, Path(tmp)))
        else:
            uvloop.run(run(args.streams, Path(tmp)))


if __name__ == "__main__":
    main()
