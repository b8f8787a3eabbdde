"""``AsyncAigosClient``: the asyncio twin of ``AigosClient`` (background work runs as tasks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import Any

from aigos.sdk import defaults
from aigos.sdk._core import DEFAULT_ACTION, ClientCore
from aigos.sdk.config import ClientConfig
from aigos.sdk.errors import AigosError, AigosUnavailable, AuthenticationError
from aigos.sdk.killswitch import AsyncHandler, AsyncKillSwitchListener, default_exit
from aigos.sdk.local import BundleRejected, LocalPolicy, public_keys
from aigos.sdk.models import Decision, Identity
from aigos.sdk.retry import RetryPolicy
from aigos.sdk.transport import AsyncTransport, HttpResponse, raise_for_problem

log = logging.getLogger("aigos.sdk")


class AsyncAigosClient(ClientCore):
    """The AIGOS client for asyncio code: every network call is awaited; ``async with`` or ``aclose()``."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        asset_card_id: str | None = None,
        *,
        set_default: bool = True,
        **options: Any,
    ) -> None:
        config = ClientConfig.resolve(
            api_key=api_key, base_url=base_url, asset_card_id=asset_card_id, **options
        )
        super().__init__(config)
        self.transport = AsyncTransport(
            config.base_url,
            timeout=config.timeout,
            retry=RetryPolicy(config.max_retries, config.backoff_base, config.backoff_max),
        )
        self.listener: AsyncKillSwitchListener | None = None
        self._closed = False
        self._background: asyncio.Task[None] | None = None
        self._alock: asyncio.Lock | None = None
        self._last_bundle = 0.0
        if set_default:
            defaults.set_default_client(self)

    def _lock(self) -> asyncio.Lock:
        if self._alock is None:
            self._alock = asyncio.Lock()
        return self._alock

    async def register(
        self, name: str, capabilities: dict[str, Any] | None = None, **fields: Any
    ) -> Identity:
        """Register an agent with the admin API key; this client then acts as it."""
        body = self._registration(name, capabilities, fields)
        upload = self._card_upload()
        if upload is not None:
            # Saved by its id: an unchanged card changes nothing, a changed one is a new version.
            path, headers, content = upload
            raise_for_problem(await self.transport.request("POST", path, content=content, headers=headers))
        response = await self.transport.request(
            "POST",
            "/v1/agents/register",
            json=body,
            headers=self._admin_headers(),
        )
        raise_for_problem(response)
        identity = Identity.from_registration(response.json())
        self._adopt_identity(identity)
        self.start()
        if self.config.local_evaluation:
            await self.refresh_bundle()
        return identity

    async def token(self) -> str:
        """A valid access token, refreshed before it expires."""
        token = self._token
        if token is not None and self._token_is_fresh():
            return token
        async with self._lock():
            if self._token is not None and (self._token_is_fresh() or not self.can_refresh):
                return self._token
            return await self._fetch_token()

    async def refresh_token(self) -> str:
        """Get a new access token now."""
        async with self._lock():
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        response = await self.transport.request("POST", "/oauth2/token", form=self._token_form())
        return self._take_token_response(response)

    async def agent_request(self, method: str, path: str, json: Any = None) -> HttpResponse:
        """A request with the agent's token; refreshed once on a 401 for an expired or revoked token."""
        stale = await self.token()
        response = await self.transport.request(
            method, path, json=json, headers={"Authorization": f"Bearer {stale}"}
        )
        if response.status == 401 and self.can_refresh:
            try:
                raise_for_problem(response)
            except AuthenticationError as exc:
                if not self._refreshable(exc):
                    return response
            async with self._lock():
                fresh = self._token if self._token != stale else await self._fetch_token()
            response = await self.transport.request(
                method, path, json=json, headers={"Authorization": f"Bearer {fresh}"}
            )
        return response

    async def check(
        self,
        action: str = DEFAULT_ACTION,
        resource: str | None = None,
        *,
        tool: str | None = None,
        domain: str | None = None,
        estimated_cost: float | None = None,
        context: dict[str, Any] | None = None,
        trace: bool = False,
    ) -> Decision:
        """As ``AigosClient.check``."""
        if not trace and not context:
            decided = self._local_decision(action, resource, tool, domain, estimated_cost)
            if decided is not None:
                return decided
        body = self._check_body(action, resource, tool, domain, estimated_cost, context, trace)
        carried = self._carry(body)
        while True:  # twice at most: again without the telemetry when the token may not write it
            try:
                return self._decision_from(await self.agent_request("POST", "/v1/policies/check", body))
            except AigosUnavailable as exc:
                self._carry_failed(body, carried, exc)
                return self._unreachable(exc, "policy check")
            except AigosError as exc:
                if not self._carry_failed(body, carried, exc):
                    raise
                carried = []

    async def refresh_bundle(self) -> bool:
        """Fetch (or revalidate by ETag) the signed policy bundle; True if a new one is in use."""
        self._last_bundle = time.monotonic()
        headers = {"Authorization": f"Bearer {await self.token()}"}
        if self.local is not None and self.local.etag:
            headers["If-None-Match"] = self.local.etag
        response = await self.transport.request("GET", "/v1/policies/bundle", headers=headers)
        if response.status == 304:
            return False
        raise_for_problem(response)
        keys = public_keys((await self.transport.request("GET", "/v1/policies/keys")).json() or {})
        try:
            self.local = LocalPolicy.load(response.json(), keys, response.headers.get("etag"))
        except BundleRejected:
            self.local = None
            raise
        return True

    async def heartbeat(self) -> dict[str, Any]:
        """Tell the server the agent is alive."""
        response = await self.agent_request("POST", f"/v1/agents/{self.agent_id}/heartbeat")
        if response.status == 401:
            self._decision_from(response)
        raise_for_problem(response)
        body: dict[str, Any] = response.json()
        return body

    def report(self, event_type: str, data: dict[str, Any] | None = None, **ids: str | None) -> None:
        """Queue a telemetry event (sent in batches)."""
        if self.config.telemetry_enabled:
            self.telemetry.add(event_type, data, trace_id=ids.get("trace_id"), span_id=ids.get("span_id"))

    async def flush(self) -> int:
        """Send every queued event now; returns how many were accepted."""
        sent = 0
        while len(self.telemetry):
            batch = self.telemetry.take()
            try:
                response = await self.agent_request("POST", "/v1/telemetry", {"events": batch})
                raise_for_problem(response)
            except AigosError as exc:
                if exc.status == 400:
                    # Every event refused: sending them again cannot help (nor must it block the rest).
                    self.telemetry.refuse(batch, exc.problem)
                    continue
                self.telemetry.put_back(batch)
                raise
            accepted, backlogged = self.telemetry.settle(batch, response.json())
            sent += accepted
            if backlogged:
                break  # the server is behind: what it gave back goes with the next flush
        self.telemetry.sent += sent
        self.telemetry.flushed()
        return sent

    def start(self) -> None:
        """Start heartbeats and the telemetry flusher on the running loop (``register`` does this)."""
        if self._background is None and not self._closed:
            self._background = asyncio.get_running_loop().create_task(self._loop(), name="aigos-background")

    async def _loop(self) -> None:
        config = self.config
        tick = min(config.heartbeat_interval, config.telemetry_interval, config.bundle_refresh, 1.0)
        last_flush = last_beat = 0.0
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            try:
                if len(self.telemetry) >= self.telemetry.batch_size or (
                    len(self.telemetry) and now - last_flush >= config.telemetry_interval
                ):
                    last_flush = now
                    await self.flush()
                if now - last_beat >= config.heartbeat_interval and not self.control.terminated:
                    last_beat = now
                    await self.heartbeat()
                if config.local_evaluation and now - self._last_bundle >= config.bundle_refresh:
                    await self.refresh_bundle()
            except AigosError as exc:
                log.warning("aigos background work failed: %s", exc)
            except Exception:
                log.exception("aigos background work failed")

    def on_kill_switch(self, handler: AsyncHandler | None = None) -> AsyncKillSwitchListener:
        """Listen for kill-switch commands in a task (same default behaviour as ``AigosClient``)."""
        if self.listener is not None and self.listener.task is not None and not self.listener.task.done():
            self.listener.handler = handler
            return self.listener
        self.listener = AsyncKillSwitchListener(self, handler).start()
        self.listening = True
        return self.listener

    async def shutdown(self) -> None:
        """End this process gracefully (flush telemetry, then SIGTERM to ourselves)."""
        try:
            await self.flush()
        except AigosError as exc:
            log.warning("telemetry flush before exit failed: %s", exc)
        default_exit()

    async def aclose(self) -> None:
        """Stop background tasks, flush telemetry, close the HTTP client."""
        if self._closed:
            return
        self._closed = True
        if self.listener is not None:
            task = self.listener.task
            if self.control.terminated and task is not None and not task.done():
                # Termination learnt from a refused call: let the stream deliver and ack the TERMINATE.
                await asyncio.wait({task}, timeout=2.0)
            await self.listener.stop()
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        if len(self.telemetry) and self.agent_id:
            try:
                await self.flush()
            except AigosError as exc:
                log.warning("aigos: %d telemetry events not sent at close: %s", len(self.telemetry), exc)
        await self.transport.close()
        defaults.forget(self)

    async def __aenter__(self) -> AsyncAigosClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
