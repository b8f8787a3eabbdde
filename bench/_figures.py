"""What the benches print about a timed phase, beside the same-run floor, and how they judge targets.

- ``Figures``: one timed phase: p50 / p99 / p99.9 / max latency, requests per second, the server's CPU
  time per request (supervisor and workers), the load client's CPU share.
- ``timed_pair``: the floor (``bench/floor.py`` through ``aigos serve``'s launcher) and then AIGOS, timed
  one right after the other with the same client, requests and concurrency, so a busy machine weighs on
  both alike; ``Row`` holds the two and their ratios.
- ``worst``: over ``--repeat`` runs, the slowest of each figure (and the least per second).
- ``Target``: a figure beside its limit, PASS or MISS.
- ``format_rows`` / ``format_targets``: the tables every bench prints.

Ratios are figure / floor: above 1 is slower for latencies and CPU, below 1 is slower for per second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench._load import HttpLoadClient, LoadResult, percentile
from bench._server import HOST, ServerProcess, cpu_seconds

LATENCIES = ("p50_us", "p99_us", "p999_us", "max_us")


@dataclass(frozen=True)
class Figures:
    """One timed phase: latency in microseconds, completions per second, server CPU per request."""

    requests: int
    errors: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    per_second: float
    wall_seconds: float
    #: Server CPU time (user + system, supervisor and every worker) per request, in microseconds.
    server_cpu_us: float | None = None
    #: The load client's CPU time over wall time (near 1: the client, not the server, was the limit).
    client_cpu_share: float | None = None
    #: Unexpected status codes and how often each came back.
    refused: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        result: LoadResult,
        server_cpu_seconds: float | None = None,
        refused: dict[str, int] | None = None,
    ) -> Figures:
        """The figures of a load-client run."""
        return cls.of_latencies(
            result.latencies_ns,
            result.wall_seconds,
            errors=result.errors,
            server_cpu_seconds=server_cpu_seconds,
            client_cpu_share=result.client_cpu_share,
            refused=refused,
        )

    @classmethod
    def of_latencies(
        cls,
        latencies_ns: list[int],
        wall_seconds: float,
        *,
        errors: int = 0,
        server_cpu_seconds: float | None = None,
        client_cpu_share: float | None = None,
        refused: dict[str, int] | None = None,
    ) -> Figures:
        """The figures of ascending per-request latencies (ns) made in ``wall_seconds``."""
        count = len(latencies_ns)
        return cls(
            requests=count,
            errors=errors,
            p50_us=percentile(latencies_ns, 0.50) / 1000,
            p99_us=percentile(latencies_ns, 0.99) / 1000,
            p999_us=percentile(latencies_ns, 0.999) / 1000,
            max_us=latencies_ns[-1] / 1000,
            per_second=count / wall_seconds,
            wall_seconds=wall_seconds,
            server_cpu_us=None if server_cpu_seconds is None else server_cpu_seconds / count * 1e6,
            client_cpu_share=client_cpu_share,
            refused=dict(refused or {}),
        )

    def ratios(self, floor: Figures) -> dict[str, float | None]:
        """Each figure over the floor's."""
        out: dict[str, float | None] = {
            name: _ratio(getattr(self, name), getattr(floor, name)) for name in LATENCIES
        }
        out["per_second"] = _ratio(self.per_second, floor.per_second)
        out["server_cpu_us"] = _ratio(self.server_cpu_us, floor.server_cpu_us)
        return out


def _ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or not floor:
        return None
    return value / floor


@dataclass(frozen=True)
class Row:
    """One phase of one run: AIGOS's figures and, when timed, the floor's right before."""

    label: str
    concurrency: int
    run: int | str  # the run's number, or "worst"
    figures: Figures
    floor: Figures | None = None
    #: Figure / floor; on a "worst" row the worst ratio of any run (each run's pair was timed together).
    ratios: dict[str, float | None] | None = None

    @classmethod
    def paired(cls, label: str, concurrency: int, run: int, figures: Figures, floor: Figures | None) -> Row:
        """A run's row, its ratios computed."""
        return cls(label, concurrency, run, figures, floor, figures.ratios(floor) if floor else None)


def worst(rows: Sequence[Row]) -> Row:
    """Over runs of one phase: the largest latencies and CPU, the least per second, and their worst ratios."""
    first = rows[0]
    figures = [row.figures for row in rows]
    floors = [row.floor for row in rows if row.floor is not None]
    return Row(
        first.label,
        first.concurrency,
        "worst",
        _worst_figures(figures),
        _worst_figures(floors) if floors else None,
        _worst_ratios([row.ratios for row in rows if row.ratios is not None]) if floors else None,
    )


def _worst_figures(figures: Sequence[Figures]) -> Figures:
    cpu = [f.server_cpu_us for f in figures if f.server_cpu_us is not None]
    client = [f.client_cpu_share for f in figures if f.client_cpu_share is not None]
    refused: dict[str, int] = {}
    for f in figures:
        for status, count in f.refused.items():
            refused[status] = refused.get(status, 0) + count
    return dataclasses.replace(
        figures[0],
        errors=sum(f.errors for f in figures),
        **{name: max(getattr(f, name) for f in figures) for name in LATENCIES},
        per_second=min(f.per_second for f in figures),
        wall_seconds=max(f.wall_seconds for f in figures),
        server_cpu_us=max(cpu) if cpu else None,
        client_cpu_share=max(client) if client else None,
        refused=refused,
    )


def _worst_ratios(all_ratios: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in all_ratios[0]:
        values = [r[name] for r in all_ratios if r[name] is not None]
        chosen = min if name == "per_second" else max
        out[name] = chosen(v for v in values if v is not None) if values else None
    return out


async def timed(client: HttpLoadClient, server: ServerProcess, requests: int) -> Figures:
    """Time ``requests`` requests on ``client``'s open connections, reading ``server``'s CPU around them."""
    cpu_before = cpu_seconds(server.pid)
    refused_before = dict(client.refused)
    result = await client.run(requests)
    server_cpu = cpu_seconds(server.pid) - cpu_before
    refused = {
        str(status): count - refused_before.get(status, 0)
        for status, count in client.refused.items()
        if count > refused_before.get(status, 0)
    }
    return Figures.of(result, server_cpu, refused)


async def timed_phase(
    server: ServerProcess,
    requests: bytes | Sequence[bytes],
    *,
    concurrency: int,
    count: int,
    warmup: int | None,
    expect_status: int = 200,
) -> Figures:
    """Open ``concurrency`` connections to ``server``, warm up, time ``count`` requests.

    ``warmup``: untimed requests first (at least one per connection); ``None``: every connection sends its
    share of the pool once (see ``HttpLoadClient``).
    """
    async with HttpLoadClient(
        HOST, server.port, requests, concurrency=concurrency, expect_status=expect_status
    ) as client:
        if warmup is None:
            await client.warm()
        else:
            await client.run(max(warmup, concurrency))
        return await timed(client, server, count)


async def timed_pair(
    aigos: ServerProcess,
    floor: ServerProcess | None,
    requests: bytes | Sequence[bytes],
    *,
    concurrency: int,
    count: int,
    warmup: int | None,
    expect_status: int = 200,
) -> tuple[Figures, Figures | None]:
    """The floor (the same request bytes, answered 200), then AIGOS, each warmed up and timed the same way."""
    floor_figures = None
    if floor is not None:
        floor_figures = await timed_phase(
            floor, requests, concurrency=concurrency, count=count, warmup=warmup, expect_status=200
        )
    figures = await timed_phase(
        aigos, requests, concurrency=concurrency, count=count, warmup=warmup, expect_status=expect_status
    )
    return figures, floor_figures


@dataclass(frozen=True)
class Target:
    """A measured figure and its limit.

    ``below``: the figure must be at most the limit (``strict``: under it), else at least the limit.
    """

    name: str
    value: float
    limit: float
    unit: str = ""
    below: bool = True
    strict: bool = False

    @property
    def passed(self) -> bool:
        """Whether the figure meets its limit."""
        if not self.below:
            return self.value >= self.limit
        return self.value < self.limit if self.strict else self.value <= self.limit


def format_targets(targets: Sequence[Target]) -> list[str]:
    """One line per target: PASS or MISS, the figure, the limit."""
    lines = []
    for t in targets:
        sign = ("<" if t.strict else "<=") if t.below else ">="
        value = f"{t.value:,.3f}".rstrip("0").rstrip(".") if abs(t.value) < 1000 else f"{t.value:,.0f}"
        lines.append(
            f"  {'PASS' if t.passed else 'MISS'}  {t.name:<48} {value:>10} {t.unit:<6} "
            f"{sign} {t.limit:,g} {t.unit}"
        )
    return lines


HEADER = (
    f"{'phase':<22} {'conc':>4} {'run':>5} {'requests':>8} │ {'p50 ms':>14} {'p99 ms':>14} "
    f"{'p99.9 ms':>14} {'max ms':>14} │ {'per s':>14} │ {'srv cpu µs/req':>15} {'cli cpu':>7}"
)


def _times(ratio: float) -> str:
    digits = 2 if ratio < 10 else 1 if ratio < 100 else 0
    return f"{ratio:.{digits}f}x"


def _cell(value: float, ratio: float | None, digits: int, width: int = 14) -> str:
    number = f"{value:,.{digits}f}"
    text = number if ratio is None else f"{number} {_times(ratio):>6}"
    return f"{text:>{width}}"


def format_row(
    label: str, concurrency: int, run: int | str, f: Figures, ratios: dict[str, float | None] | None
) -> str:
    """One line: the figures, each followed by its ratio to the floor when given."""
    r = ratios or {}
    cpu = "-" if f.server_cpu_us is None else _cell(f.server_cpu_us, r.get("server_cpu_us"), 0, 15).strip()
    client = "-" if f.client_cpu_share is None else f"{f.client_cpu_share:.0%}"
    return (
        f"{label:<22} {concurrency:>4} {run!s:>5} {f.requests:>8} │ "
        + " ".join(_cell(getattr(f, name) / 1000, r.get(name), 3) for name in LATENCIES)
        + f" │ {_cell(f.per_second, r.get('per_second'), 0)} │ {cpu:>15} {client:>7}"
    )


def format_rows(rows: Sequence[Row]) -> list[str]:
    """The table: for each row its floor's line (``floor``) then AIGOS's, with ratios."""
    lines = [HEADER]
    for row in rows:
        if row.floor is not None:
            lines.append(format_row("  floor", row.concurrency, row.run, row.floor, None))
        lines.append(format_row(row.label, row.concurrency, row.run, row.figures, row.ratios))
    lines.append(
        "(x = AIGOS / floor of the same run: above 1 slower, per s below 1 slower; floor = bare "
        "Starlette app on `aigos serve`'s launcher, same workers, client, requests; srv cpu = supervisor "
        "+ workers; cli cpu = load client's CPU share)"
    )
    return lines


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default``: dataclasses as dicts."""
    if isinstance(value, Target):
        return {**dataclasses.asdict(value), "passed": value.passed}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
