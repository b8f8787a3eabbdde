"""The process's Prometheus metrics (``prometheus-client``), and one consistent scrape over every worker.

With ``aigos serve --workers N`` every worker writes its samples to memory-mapped files in the directory
``PROMETHEUS_MULTIPROC_DIR`` names (``serve`` creates a fresh one unless it is given), and ``/metrics``, on
whichever worker answers, adds up all of them: counters and histograms summed over every worker that ever
ran, gauges as their mode says (``livesum`` over the workers alive, ``livemax`` the highest). With one
process the samples stay in memory.

What is counted where (one increment where the thing happens): checks and their latency in
``policy.checks``; tokens in the OAuth token endpoint; registrations, kill-switch commands, deliveries and
acknowledgements in their contexts; HTTP requests by route template in ``RequestContextMiddleware``
(the check's latency has its own histogram, so the check pays one counter and one histogram more, not
two). What a process already tallies (the event log, admission, the loop's lag, open streams) is read by
``Sampler`` once a second and right before a scrape, so those modules know nothing of Prometheus.

No metric has a tenant label: tenants are unbounded, and a series per tenant and code would grow without
limit. Per-tenant figures are the usage API's and the audit log's. Labels here are bounded by the code:
decisions and denial codes, OAuth grant types and error codes, command types and scopes, route templates
(``unmatched`` for a path no route has), methods and statuses, admission codes and lanes.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from aigos.server.processes import alive

if TYPE_CHECKING:
    from aigos.server.audit.records import Tallies

#: Where the workers' sample files are (``prometheus-client``'s own variable).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The text exposition format's content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds; they resolve the check's 100 µs to 10 ms (its target is 1 ms at p99) and what lies past it.
CHECK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
#: Seconds; trigger to delivery and to acknowledgement (the targets are 50 ms and 100 ms, the SLA 5 s).
COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds; any HTTP request.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds of event-loop lateness; no pause should reach 0.05.
LOOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: The kill-switch command types and scopes, every pair exported from the start: ``increase()`` ignores a
#: series' first sample, so an alert on the first PAUSE after a restart needs the series at 0 before it.
COMMANDS = ("PAUSE", "RESUME", "TERMINATE")
SCOPES = ("agent", "lineage", "tenant")
#: The route label of a request no route matched (its path would be unbounded).
UNMATCHED = "unmatched"

# A ``_created`` series beside every counter and histogram doubles what a scrape carries, for a start time
# Prometheus does not use.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)

POLICY_CHECKS = Counter(
    "aigos_policy_checks",
    "Policy checks decided, by decision (allowed, denied) and denial code.",
    ["decision", "code"],
    registry=REGISTRY,
)
CHECK_SECONDS = Histogram(
    "aigos_policy_check_duration_seconds",
    "Time from a check request's arrival to its answer.",
    buckets=CHECK_BUCKETS,
    registry=REGISTRY,
)
TOKENS_ISSUED = Counter(
    "aigos_tokens_issued", "Access tokens issued, by grant type.", ["grant_type"], registry=REGISTRY
)
TOKENS_REFUSED = Counter(
    "aigos_tokens_refused",
    "Token requests refused, by OAuth error code.",
    ["reason"],
    registry=REGISTRY,
)
REGISTRATIONS = Counter("aigos_agent_registrations", "Agents registered.", registry=REGISTRY)
KILLSWITCH_COMMANDS = Counter(
    "aigos_killswitch_commands",
    "Kill-switch commands committed, by command and scope (agent, lineage, tenant).",
    ["command", "scope"],
    registry=REGISTRY,
)
KILLSWITCH_DELIVERY = Histogram(
    "aigos_killswitch_delivery_seconds",
    "From a command's issue to its write on an agent's stream.",
    buckets=COMMAND_BUCKETS,
    registry=REGISTRY,
)
KILLSWITCH_ACKNOWLEDGEMENT = Histogram(
    "aigos_killswitch_acknowledgement_seconds",
    "From a command's issue to the agent's acknowledgement.",
    buckets=COMMAND_BUCKETS,
    registry=REGISTRY,
)
KILLSWITCH_BOOKKEEPING_FAILURES = Counter(
    "aigos_killswitch_bookkeeping_failures",
    "Fleet-command bookkeeping passes that failed and will be tried again (statuses not yet moved).",
    registry=REGISTRY,
)
KILLSWITCH_STREAMS = Gauge(
    "aigos_killswitch_streams",
    "Kill-switch streams open.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
KILLSWITCH_STREAMS_LIMIT = Gauge(
    "aigos_killswitch_streams_limit",
    "Streams the processes can hold at most (their open-file limits).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
REPLICAS = Gauge(
    "aigos_replicas",
    "Server processes sharing this database, as this one counts them (rate limits are divided by it "
    "while Redis is down).",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "aigos_rate_limited",
    "Requests refused 429 by a rate limit, by limit.",
    ["limit"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "aigos_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "aigos_http_request_duration_seconds",
    "HTTP request latency by method and route template (the check's is aigos_policy_check_duration_seconds).",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)
DATABASE_ERRORS = Counter(
    "aigos_database_errors",
    "Requests answered 503 because the database was unreachable or refused.",
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "aigos_redis_errors",
    "Redis operations that failed (the bus, rate limits, counters).",
    registry=REGISTRY,
)
EVENTLOG_QUEUE_DEPTH = Gauge(
    "aigos_eventlog_queue_depth",
    "Buffered events waiting to be appended.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
EVENTLOG_QUEUE_CAPACITY = Gauge(
    "aigos_eventlog_queue_capacity",
    "Buffered events held before new ones drop.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
EVENTLOG_STALLED = Gauge(
    "aigos_eventlog_stalled",
    "1 while a batch writer cannot append.",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
_EVENTLOG_COUNTERS = {
    "appended": Counter("aigos_eventlog_appended", "Events appended.", registry=REGISTRY),
    "dropped": Counter(
        "aigos_eventlog_dropped", "Events dropped because the queue was full.", registry=REGISTRY
    ),
    "set_aside": Counter(
        "aigos_eventlog_set_aside",
        "Events the database refused, set aside and recorded as audit.event_set_aside.",
        registry=REGISTRY,
    ),
    "flush_failures": Counter(
        "aigos_eventlog_flush_failures",
        "Batch appends that failed and were retried (the database was unreachable).",
        registry=REGISTRY,
    ),
    "spilled": Counter(
        "aigos_eventlog_spilled",
        "Events written to a spill file at shutdown because the database would not take them.",
        registry=REGISTRY,
    ),
    "replayed": Counter(
        "aigos_eventlog_replayed", "Events replayed from spill files at start.", registry=REGISTRY
    ),
}
REQUESTS_REFUSED = Counter(
    "aigos_requests_refused",
    "Requests answered 503 by admission (shed, past their deadline, an outage), by code.",
    ["code"],
    registry=REGISTRY,
)
REQUESTS_IN_FLIGHT = Gauge(
    "aigos_requests_in_flight",
    "Requests being handled, by admission lane.",
    ["lane"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
LOOP_LAG = Histogram(
    "aigos_event_loop_lag_seconds",
    "How late the event loop's 10 ms ticker woke (a pause every request waited through).",
    buckets=LOOP_BUCKETS,
    registry=REGISTRY,
)
LOOP_LAG_MAX = Gauge(
    "aigos_event_loop_lag_max_seconds",
    "Longest event-loop pause of any worker over the last few seconds.",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)

for _command in COMMANDS:
    for _scope in SCOPES:
        KILLSWITCH_COMMANDS.labels(_command, _scope)

#: Off for a benchmark's "metrics off" run (``AIGOS_METRICS_ENABLED=false``): the hot paths skip recording.
enabled = True

# The check's children, looked up once per (allowed, code): ``labels()`` takes a lock and builds a key.
_checks: dict[tuple[bool, str | None], Counter] = {}


def checked(allowed: bool, code: str | None, seconds: float) -> None:
    """Count one decided check and its latency."""
    child = _checks.get((allowed, code))
    if child is None:
        child = _checks[(allowed, code)] = POLICY_CHECKS.labels(
            "allowed" if allowed else "denied", code or ""
        )
    child.inc()
    CHECK_SECONDS.observe(seconds)


#: Methods labelled as themselves; any other a client sends is ``other`` (the label stays bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The policy check's route: its latency is ``aigos_policy_check_duration_seconds``, so the hot path pays
#: one counter here rather than a second histogram.
CHECK_ROUTE = "/v1/policies/check"
_requests: dict[tuple[str, str, int], tuple[Counter, Histogram | None]] = {}


def answered(method: str, route: str, status: int, seconds: float) -> None:
    """Count one HTTP request by method, route template and status, and its latency."""
    label = method if method in METHODS else "other"
    children = _requests.get((label, route, status))
    if children is None:
        children = _requests[(label, route, status)] = (
            HTTP_REQUESTS.labels(label, route, str(status)),
            None if route == CHECK_ROUTE else HTTP_SECONDS.labels(label, route),
        )
    counter, histogram = children
    counter.inc()
    if histogram is not None:
        histogram.observe(seconds)


async def increment(counter: Counter) -> None:
    """Add one to ``counter`` (an ``after_commit`` callback: counted once the thing is durable)."""
    counter.inc()


async def commands_issued(command: str, scope: str, count: int = 1) -> None:
    """Count committed kill-switch commands (an ``after_commit`` callback; a fleet command counts once,
    whatever its size)."""
    if enabled and count:
        KILLSWITCH_COMMANDS.labels(command, scope).inc(count)


async def acknowledged(issued_at: datetime, at: datetime) -> None:
    """Observe one acknowledgement's time since its command's issue (an ``after_commit`` callback)."""
    if enabled:
        KILLSWITCH_ACKNOWLEDGEMENT.observe(max(0.0, (at - issued_at).total_seconds()))


def delivered(seconds: Iterable[float]) -> None:
    """Observe deliveries' times since their commands' issue (noted during a fan-out, observed after it:
    a histogram observation per stream would lengthen every fan-out)."""
    if enabled:
        for each in seconds:
            KILLSWITCH_DELIVERY.observe(max(0.0, each))


class Lane(Protocol):
    """An admission lane, as the sampler reads it."""

    name: str
    active: int


class Sampled(Protocol):
    """What the sampler reads of a process (its runtime's parts, duck-typed to keep them apart)."""

    def eventlog(self) -> tuple[Tallies, int, int, bool]:
        """The event log's tallies, queue depth, queue capacity and whether it is stalled."""
        ...

    def streams(self) -> int:
        """Kill-switch streams open here."""
        ...

    def replicas(self) -> int:
        """Server processes sharing this database, as counted here."""
        ...

    def refused(self) -> dict[str, int]:
        """Requests admission refused since the start, by code."""
        ...

    def lanes(self) -> Iterable[Lane]:
        """Admission's lanes."""
        ...

    def worst_lag(self) -> float:
        """The longest event-loop pause since the previous call (seconds)."""
        ...


class Sampler:
    """Copies a process's own tallies and gauges into the metrics (counters by their increase)."""

    #: How many one-second maxima ``aigos_event_loop_lag_max_seconds`` spans.
    LAG_WINDOW = 5

    def __init__(self, source: Sampled) -> None:
        self.source = source
        self._seen: dict[str, int] = {}
        self._refused_seen: dict[str, int] = {}
        self._lags: list[float] = []
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        KILLSWITCH_STREAMS_LIMIT.set(soft if soft != resource.RLIM_INFINITY else 1_048_576)

    def sample(self) -> None:
        """Bring every sampled metric up to date."""
        tallies, depth, capacity, stalled = self.source.eventlog()
        for name, counter in _EVENTLOG_COUNTERS.items():
            now = int(getattr(tallies, name))
            grown = now - self._seen.get(name, 0)
            if grown > 0:
                counter.inc(grown)
            self._seen[name] = now
        EVENTLOG_QUEUE_DEPTH.set(depth)
        EVENTLOG_QUEUE_CAPACITY.set(capacity)
        EVENTLOG_STALLED.set(1 if stalled else 0)
        KILLSWITCH_STREAMS.set(self.source.streams())
        REPLICAS.set(self.source.replicas())
        for code, count in self.source.refused().items():
            grown = count - self._refused_seen.get(code, 0)
            if grown > 0:
                REQUESTS_REFUSED.labels(code).inc(grown)
            self._refused_seen[code] = count
        for lane in self.source.lanes():
            REQUESTS_IN_FLIGHT.labels(lane.name).set(lane.active)
        self._lags = [*self._lags[-(self.LAG_WINDOW - 1) :], self.source.worst_lag()]
        LOOP_LAG_MAX.set(max(self._lags))


def multiprocess_dir() -> str | None:
    """The directory the workers share their samples in, if they do."""
    return os.environ.get(MULTIPROC_ENV) or None


def exposition() -> bytes:
    """Every metric in the Prometheus text format: over all workers if they share samples."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def forget_process(pid: int) -> None:
    """Drop an exited worker's live gauges (its counters stay: they are part of the totals)."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def forget_exited_processes() -> None:
    """Drop the live gauges of workers that exited without saying so (killed, crashed)."""
    path = multiprocess_dir()
    if path is None:
        return
    for name in os.listdir(path):
        if not name.startswith("gauge_live") or not name.endswith(".db"):
            continue
        pid = int(name.rsplit("_", 1)[1].removesuffix(".db"))
        if not alive(pid):
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
