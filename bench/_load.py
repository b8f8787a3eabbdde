"""A lean HTTP/1.1 load client: raw asyncio streams, one keep-alive connection per concurrent worker.

It does the least work per request it can (write prepared bytes, read the status line and headers,
read ``Content-Length`` bytes of body) so that on a small machine the server, not the client, is what
gets measured. Each worker keeps exactly one request in flight; workers draw from one shared budget,
so a run makes exactly the requested number of requests. Given a pool of different requests instead of
one, connection ``i`` replays its own share ``pool[i::concurrency]`` in turn.

    with load_runner() as runner:
        result = runner.run(measure(HOST, port, build_request("GET", "/health"), concurrency=32,
                                    requests=20_000))
"""

from __future__ import annotations

import asyncio
import gc
import math
import signal
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class ProtocolError(Exception):
    """The server's reply is not something this minimal client understands."""


def build_request(
    method: str, path: str, *, headers: Mapping[str, str] | None = None, body: bytes = b""
) -> bytes:
    """The bytes of one HTTP/1.1 request (``Host: x``, plus ``Content-Length`` when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: x"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (head, then a ``Content-Length`` body) and return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ProtocolError(f"unexpected status line: {head[:40]!r}")
    status = int(head[9:12])
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    if start < 0:
        raise ProtocolError(f"response without Content-Length: {head[:200]!r}")
    start += len(b"\r\ncontent-length:")
    length = int(lower[start : lower.index(b"\r\n", start)])
    if length:
        await reader.readexactly(length)
    return status


@contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection in this (the measuring) process while the block runs.

    A collection pass in the load client lands in whichever request is in flight and would be reported
    as the server's latency; the latencies list and the per-request objects make such passes frequent.
    """
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile (``fraction`` in (0, 1]) of an ascending list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LoadResult:
    """Timings of one measured run: per-request latencies (ns, ascending) and the wall time."""

    concurrency: int
    latencies_ns: list[int] = field(repr=False)
    errors: int
    wall_seconds: float
    client_cpu_seconds: float

    @property
    def requests(self) -> int:
        """Requests completed."""
        return len(self.latencies_ns)

    @property
    def requests_per_second(self) -> float:
        """Completed requests divided by wall time."""
        return self.requests / self.wall_seconds

    @property
    def p50_ns(self) -> int:
        """Median round trip."""
        return percentile(self.latencies_ns, 0.50)

    @property
    def p99_ns(self) -> int:
        """99th percentile round trip."""
        return percentile(self.latencies_ns, 0.99)

    @property
    def p999_ns(self) -> int:
        """99.9th percentile round trip."""
        return percentile(self.latencies_ns, 0.999)

    @property
    def max_ns(self) -> int:
        """Slowest round trip."""
        return self.latencies_ns[-1]

    @property
    def client_cpu_share(self) -> float:
        """CPU time of this (load client) process over wall time; near 1.0 means the client was the limit."""
        return self.client_cpu_seconds / self.wall_seconds


class HttpLoadClient:
    """``concurrency`` keep-alive connections to ``host:port`` that replay prepared requests.

    ``requests`` is one request for every connection, or a pool: connection ``i`` then replays
    ``pool[i::concurrency]`` in turn. With several server workers each connection stays on one worker, so a
    fixed share per connection, sent once first (``warm``), leaves no cold cache entry on the worker it
    talks to. ``async with HttpLoadClient(...) as client:`` opens the connections; ``await client.run(n)``
    makes ``n`` requests across them (call it once to warm up, then again to measure).
    """

    def __init__(
        self,
        host: str,
        port: int,
        requests: bytes | Sequence[bytes],
        *,
        concurrency: int,
        expect_status: int = 200,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        pool = [requests] if isinstance(requests, bytes) else list(requests)
        if not pool:
            raise ValueError("no request to send")
        self.host = host
        self.port = port
        self.concurrency = concurrency
        self.expect_status = expect_status
        self.shares = [pool[i::concurrency] or pool for i in range(concurrency)]
        #: Unexpected status codes, with how often each came back (warm-up and timed runs).
        self.refused: Counter[int] = Counter()
        self._connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __aenter__(self) -> HttpLoadClient:
        for _ in range(self.concurrency):
            self._connections.append(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for _, writer in self._connections:
            writer.close()
        for _, writer in self._connections:
            with suppress(ConnectionError, OSError):
                await writer.wait_closed()
        self._connections.clear()

    async def warm(self) -> int:
        """Send every connection's share once, untimed; the number of unexpected answers."""
        before = sum(self.refused.values())
        await asyncio.gather(*(self._worker(i, len(self.shares[i]), None) for i in range(self.concurrency)))
        return sum(self.refused.values()) - before

    async def run(self, requests: int) -> LoadResult:
        """Make exactly ``requests`` requests, at most one in flight per connection, and time each."""
        if not self._connections:
            raise RuntimeError("not connected; use `async with HttpLoadClient(...)`")
        budget = [requests]
        latencies: list[int] = []
        with collector_paused():
            cpu_start = time.process_time()
            wall_start = time.perf_counter()
            errors = await asyncio.gather(
                *(self._worker(i, budget, latencies) for i in range(self.concurrency))
            )
            wall = time.perf_counter() - wall_start
        cpu = time.process_time() - cpu_start
        latencies.sort()
        return LoadResult(
            concurrency=self.concurrency,
            latencies_ns=latencies,
            errors=sum(errors),
            wall_seconds=wall,
            client_cpu_seconds=cpu,
        )

    async def _worker(self, index: int, budget: list[int] | int, latencies: list[int] | None) -> int:
        """Connection ``index``'s loop: its own count (``int``) or draws from a shared ``[remaining]``."""
        reader, writer = self._connections[index]
        share = self.shares[index]
        size = len(share)
        expect = self.expect_status
        clock = time.perf_counter_ns
        shared = budget if isinstance(budget, list) else [budget]
        errors = turn = 0
        while shared[0] > 0:  # bounded by the budget
            shared[0] -= 1
            request = share[turn % size] if size > 1 else share[0]
            turn += 1
            start = clock()
            # The request is small and its reply is awaited before the next write, so the transport
            # buffer never fills and no drain() is needed.
            writer.write(request)
            status = await read_response(reader)
            if latencies is not None:
                latencies.append(clock() - start)
            if status != expect:
                errors += 1
                self.refused[status] += 1
        return errors


async def measure(
    host: str, port: int, request: bytes, *, concurrency: int, requests: int, warmup: int = 200
) -> LoadResult:
    """Open ``concurrency`` connections, make ``warmup`` untimed requests, then time ``requests`` more."""
    async with HttpLoadClient(host, port, request, concurrency=concurrency) as client:
        await client.run(max(warmup, concurrency))
        return await client.run(requests)


async def _exit_on_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro``; on SIGTERM cancel it and raise ``SystemExit(128 + SIGTERM)``."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await coro
    except asyncio.CancelledError:
        if terminated:
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)


class LoadRunner:
    """Runs coroutines on one event loop (uvloop when installed), reused across scenarios."""

    def __init__(self) -> None:
        try:
            import uvloop
        except ImportError:
            self._runner = asyncio.Runner()
            self.loop_name = "asyncio"
        else:
            self._runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            self.loop_name = "uvloop"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion and return its result.

        Ctrl-C cancels it and raises ``KeyboardInterrupt`` (``asyncio.Runner``); SIGTERM cancels it and
        raises ``SystemExit(143)``, so callers' ``with`` blocks stop their servers either way.
        """
        return self._runner.run(_exit_on_sigterm(coro))

    def close(self) -> None:
        """Close the event loop."""
        self._runner.close()


@contextmanager
def load_runner() -> Iterator[LoadRunner]:
    """A ``LoadRunner`` closed on exit."""
    runner = LoadRunner()
    try:
        yield runner
    finally:
        runner.close()
