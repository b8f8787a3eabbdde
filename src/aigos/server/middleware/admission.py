"""Admission: a worker takes on only what it can answer in time, and refuses the rest at once.

Without it, every request that arrives is started: under a slow database or more clients than the
worker can serve, all of them slow down together, and clients time out with an unknown outcome. Here:

- **Lanes.** A worker handles at most ``AIGOS_MAX_REQUESTS_IN_FLIGHT`` requests at once (from arrival to
  the start of the response). One more waits up to ``AIGOS_ADMISSION_WAIT_SECONDS`` for its turn, in
  arrival order, behind at most as many others; otherwise it is answered 503 ``OVERLOADED`` with
  ``Retry-After`` straight away. Health checks (``/health``, ``/health/*``) are never held back, and the
  kill switch (trigger, stream, acknowledgement) has a lane of its own, as wide, so an operator can stop
  an agent while the worker sheds everything else.
- **Deadline.** A request must be answered within ``AIGOS_REQUEST_DEADLINE_SECONDS`` of its arrival.
  When the deadline passes before the request commits anything, its work is stopped (the transaction
  rolls back) and it is answered 503 ``DEADLINE_EXCEEDED``: nothing was changed, it is safe to retry. A
  commit that starts gets a short grace, and is answered ``OUTCOME_UNKNOWN`` only if it outlasts that
  too (see ``aigos.server.deadline``); a response that has started (a stream) runs as long as it likes.
- **Outages.** A database error that escaped the route's handlers is answered as the 503 it is
  (``DATABASE_UNAVAILABLE``, ``DATABASE_BUSY``, ``STORAGE_FULL``), never as a 500.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigos.server import deadline
from aigos.server.db.outage import DatabaseUnavailable, unavailable
from aigos.server.errors import ServiceUnavailable
from aigos.server.problems import error_response

log = structlog.get_logger("aigos.admission")

#: Requests answered whatever the load: a load balancer's probes and the scrape must see the worker as it is.
UNMETERED_PREFIXES = ("/health", "/metrics")
#: The kill switch's own lane: (method, path) pairs and the acknowledgement's path shape.
KILLSWITCH_ROUTES = {("POST", "/v1/kill-switch/trigger"), ("GET", "/v1/kill-switch/stream")}
KILLSWITCH_COMMANDS = "/v1/kill-switch/commands/"
#: Routes that by nature take longer than a request deadline (verifying a whole log); still admitted.
NO_DEADLINE_ROUTES = {("POST", "/v1/audit/verify")}


class Lane:
    """At most ``limit`` requests at once; up to ``limit`` more may wait, each for a bounded time."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.active = 0
        self._waiting: deque[asyncio.Future[bool]] = deque()

    async def enter(self, wait: float) -> bool:
        """Take a place, waiting up to ``wait`` seconds for one; False when none came free in time."""
        if self.active < self.limit and not self._waiting:
            self.active += 1
            return True
        if wait <= 0 or len(self._waiting) >= self.limit:
            return False
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        self._waiting.append(turn)
        timer = loop.call_later(wait, _decide, turn, False)
        try:
            return await turn
        except BaseException:
            # Cancelled while waiting (the client left, the server stops): a place handed over meanwhile
            # goes to the next in line.
            if turn.done() and not turn.cancelled() and turn.result():
                self.leave()
            raise
        finally:
            timer.cancel()
            if turn in self._waiting:  # turned away by the timer, or cancelled: not in line any more
                self._waiting.remove(turn)

    def leave(self) -> None:
        """Give the place back: to the longest waiting request still waiting, else to the lane."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(True)
                return
        self.active -= 1


def _decide(turn: asyncio.Future[bool], admitted: bool) -> None:
    if not turn.done():
        turn.set_result(admitted)


class Admission:
    """The worker's lanes and what they refused, shared by the middleware and the metrics route."""

    def __init__(self, *, limit: int, wait_seconds: float, deadline_seconds: float) -> None:
        self.general = Lane("general", limit)
        # As wide as the general lane, and apart from it: a reconnecting fleet of agents streams again soon.
        self.killswitch = Lane("killswitch", limit)
        self.wait_seconds = min(wait_seconds, deadline_seconds)
        self.deadline_seconds = deadline_seconds
        #: Requests answered 503 here, by code (``OVERLOADED``, ``DEADLINE_EXCEEDED``, outages).
        self.refused: Counter[str] = Counter()

    def lane_of(self, scope: Scope) -> Lane | None:
        """The lane a request waits in; None for requests never held back (health checks, metrics)."""
        path: str = scope["path"]
        if path.startswith(UNMETERED_PREFIXES):
            return None
        method: str = scope["method"]
        if (method, path) in KILLSWITCH_ROUTES or (
            method == "POST" and path.startswith(KILLSWITCH_COMMANDS) and path.endswith("/ack")
        ):
            return self.killswitch
        return self.general


class AdmissionMiddleware:
    """Lanes, the request deadline and outage answers (see the module's description)."""

    def __init__(self, app: ASGIApp, *, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admission = self.admission
        lane = admission.lane_of(scope)
        if lane is None:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        if not await lane.enter(admission.wait_seconds):
            await self._refuse(scope, receive, send, _overloaded(lane))
            return
        started = False
        inside = True
        limit: deadline.Deadline | None = None

        def leave() -> None:
            nonlocal inside
            if inside:
                inside = False
                lane.leave()

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                # The answer is being sent: neither cut short nor counted any longer (a stream may last).
                if limit is not None:
                    limit.settle()
                leave()
            await send(message)

        try:
            if (scope["method"], scope["path"]) in NO_DEADLINE_ROUTES:
                await self.app(scope, receive, send_started)
                return
            left = admission.deadline_seconds - (loop.time() - arrived)
            async with deadline.within(left) as limit:
                await self.app(scope, receive, send_started)
        except Exception as error:
            if started:
                raise
            problem: ServiceUnavailable | None
            if isinstance(error, TimeoutError) and limit is not None and limit.expired():
                log.warning("deadline_exceeded", path=scope["path"], committing=limit.committing)
                problem = (
                    DatabaseUnavailable("OUTCOME_UNKNOWN")
                    if limit.committing
                    else _deadline_exceeded(admission.deadline_seconds)
                )
            else:
                problem = unavailable(error)
                if problem is None:
                    raise
                log.warning("database_unavailable", error=repr(error), path=scope["path"])
            leave()
            await self._refuse(scope, receive, send, problem)
        finally:
            leave()

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: ServiceUnavailable) -> None:
        self.admission.refused[error.instance_code] += 1
        await error_response(scope, error)(scope, receive, send)


def _overloaded(lane: Lane) -> ServiceUnavailable:
    return ServiceUnavailable(
        "The server is handling as many requests as it can; nothing was done. Retry shortly.",
        code="OVERLOADED",
        headers={"Retry-After": "1"},
        lane=lane.name,
    )


def _deadline_exceeded(seconds: float) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The request could not be completed within its deadline ({seconds:g} s) and was stopped before "
        "committing anything; nothing was changed. Retry shortly.",
        code="DEADLINE_EXCEEDED",
        headers={"Retry-After": "1"},
    )
