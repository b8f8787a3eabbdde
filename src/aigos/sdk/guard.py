"""``@guard``: a policy check before every call of a function, coroutine or method, and its outcome after.

    @guard(tool="web_search", domain="api.company.com")
    def search(query: str) -> list[str]: ...

Before the call: the kill-switch state (TERMINATE raises ``AgentTerminated`` at once; PAUSE waits for
RESUME or raises ``AgentPaused``), then the check (local bundle or ``/v1/policies/check``); a denial raises
``PolicyDenied`` with the reason and matched rule. After it: ``tool.completed`` or ``tool.failed`` is
queued for telemetry with the tool, the decision id and the duration.

``domain``, ``resource`` and ``cost`` may be callables of the call's arguments, for values known only then.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from aigos.sdk import defaults
from aigos.sdk._core import DEFAULT_ACTION
from aigos.sdk.aclient import AsyncAigosClient
from aigos.sdk.client import AigosClient
from aigos.sdk.control import PAUSED
from aigos.sdk.errors import AgentPaused, AgentTerminated, ConfigurationError, PolicyDenied
from aigos.sdk.models import Decision

P = ParamSpec("P")
R = TypeVar("R")
Value = str | Callable[..., str | None] | None
Cost = float | Callable[..., float | None] | None
AnyClient = AigosClient | AsyncAigosClient


@overload
def guard(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def guard(
    func: None = None,
    /,
    *,
    tool: str | None = None,
    action: str = DEFAULT_ACTION,
    resource: Value = None,
    domain: Value = None,
    cost: Cost = None,
    client: AnyClient | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def guard(
    func: Callable[P, R] | None = None,
    /,
    *,
    tool: str | None = None,
    action: str = DEFAULT_ACTION,
    resource: Value = None,
    domain: Value = None,
    cost: Cost = None,
    client: AnyClient | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Guard ``func`` (``@guard`` or ``@guard(tool=..., domain=..., cost=..., client=...)``).

    ``tool`` defaults to the function's name; ``client`` to the default client (the newest
    ``AigosClient``/``AsyncAigosClient``, or ``aigos.sdk.configure(...)``).
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        spec = Guarded(fn, tool or fn.__name__, action, resource, domain, cost, client)
        wrapper: Any
        if inspect.iscoroutinefunction(fn):

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await spec.call_async(*args, **kwargs)

        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return spec.call(*args, **kwargs)

        wrapped: Callable[P, R] = functools.wraps(fn)(wrapper)
        wrapped.__aigos_guard__ = spec  # type: ignore[attr-defined]
        return wrapped

    return decorate(func) if func is not None else decorate


class Guarded:
    """One guarded function: what to check, and the sync and async ways of calling it."""

    def __init__(
        self,
        fn: Callable[..., Any],
        tool: str,
        action: str,
        resource: Value,
        domain: Value,
        cost: Cost,
        client: AnyClient | None,
    ) -> None:
        self.fn = fn
        self.tool = tool
        self.action = action
        self.resource = resource
        self.domain = domain
        self.cost = cost
        self.client = client

    def _client(self) -> AnyClient:
        return self.client or defaults.default_client()

    def _values(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str | None, str | None, float | None]:
        resource = self.resource(*args, **kwargs) if callable(self.resource) else self.resource
        domain = self.domain(*args, **kwargs) if callable(self.domain) else self.domain
        cost = self.cost(*args, **kwargs) if callable(self.cost) else self.cost
        return resource, domain, cost

    def report(
        self, client: AnyClient, decision: Decision, started: float, error: BaseException | None
    ) -> None:
        """Queue ``tool.completed`` / ``tool.failed`` with the tool, decision id, duration (and error)."""
        data: dict[str, Any] = {
            "tool": self.tool,
            "decision_id": decision.decision_id,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if error is not None:
            data["error"] = type(error).__name__
        client.report("tool.failed" if error is not None else "tool.completed", data)

    # -- sync -----------------------------------------------------------------------------------------

    def admit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[AigosClient, Decision]:
        """Everything before the call: kill-switch gate and policy check; raises if the call may not run."""
        client = self._client()
        if not isinstance(client, AigosClient):
            raise ConfigurationError(
                "a plain function needs an AigosClient (AsyncAigosClient guards coroutines)"
            )
        client.control.gate()
        resource, domain, cost = self._values(args, kwargs)
        return client, self._decide(client, resource, domain, cost)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Check, call, report."""
        client, decision = self.admit(args, kwargs)
        started = time.perf_counter()
        try:
            result = self.fn(*args, **kwargs)
        except BaseException as exc:
            self.report(client, decision, started, exc)
            raise
        self.report(client, decision, started, None)
        return result

    def _decide(
        self, client: AigosClient, resource: str | None, domain: str | None, cost: float | None
    ) -> Decision:
        waited = 0.0
        while True:
            decision = client.check(self.action, resource, tool=self.tool, domain=domain, estimated_cost=cost)
            if decision.allowed:
                return decision
            if decision.code != "PAUSED":
                _refuse(client, decision)
            # Paused on the server, perhaps before this process heard: wait it out (or raise), re-asking.
            waited = _pause_step(client, waited)
            if client.control.state == PAUSED:
                client.control.gate()
            else:
                time.sleep(_PAUSE_POLL)

    # -- async ----------------------------------------------------------------------------------------

    async def aadmit(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], client: AnyClient | None = None
    ) -> tuple[AnyClient, Decision]:
        """``admit`` for coroutines (with ``client`` overriding the guard's, e.g. the caller's identity)."""
        client = client or self._client()
        await client.control.agate()
        resource, domain, cost = self._values(args, kwargs)
        return client, await self._adecide(client, resource, domain, cost)

    async def call_async(self, *args: Any, **kwargs: Any) -> Any:
        """Check, await, report."""
        client, decision = await self.aadmit(args, kwargs)
        started = time.perf_counter()
        try:
            result = await self.fn(*args, **kwargs)
        except BaseException as exc:
            self.report(client, decision, started, exc)
            raise
        self.report(client, decision, started, None)
        return result

    async def _acheck(
        self, client: AnyClient, resource: str | None, domain: str | None, cost: float | None
    ) -> Decision:
        if isinstance(client, AsyncAigosClient):
            return await client.check(
                self.action, resource, tool=self.tool, domain=domain, estimated_cost=cost
            )
        local = client._local_decision(self.action, resource, self.tool, domain, cost)
        if local is not None:
            return local
        # A sync client's network call must not block the event loop.
        return await asyncio.to_thread(
            client.check, self.action, resource, tool=self.tool, domain=domain, estimated_cost=cost
        )

    async def _adecide(
        self, client: AnyClient, resource: str | None, domain: str | None, cost: float | None
    ) -> Decision:
        waited = 0.0
        while True:
            decision = await self._acheck(client, resource, domain, cost)
            if decision.allowed:
                return decision
            if decision.code != "PAUSED":
                _refuse(client, decision)
            waited = _pause_step(client, waited)
            if client.control.state == PAUSED:
                await client.control.agate()
            else:
                await asyncio.sleep(_PAUSE_POLL)


_PAUSE_POLL = 0.25


def _refuse(client: AnyClient, decision: Decision) -> None:
    if decision.code == "TERMINATED":
        client.control.apply("TERMINATE", decision.reason or "")
        raise AgentTerminated(decision.reason or "the agent was terminated")
    raise PolicyDenied(decision)


def _pause_step(client: AnyClient, waited: float) -> float:
    """Raise ``AgentPaused`` unless configured to wait (and within ``pause_timeout``)."""
    config = client.config
    if config.on_pause == "raise":
        raise AgentPaused("the agent is paused")
    if config.pause_timeout is not None and waited >= config.pause_timeout:
        raise AgentPaused("the agent stayed paused past pause_timeout")
    return waited + _PAUSE_POLL
