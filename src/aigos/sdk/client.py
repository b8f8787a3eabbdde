"""``AigosClient``: the synchronous client (register, tokens, checks, heartbeats, telemetry, kill switch)."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aigos.sdk import defaults
from aigos.sdk._core import DEFAULT_ACTION, ClientCore
from aigos.sdk.config import ClientConfig
from aigos.sdk.errors import AigosError, AigosUnavailable, AuthenticationError
from aigos.sdk.killswitch import Handler, KillSwitchListener, default_exit
from aigos.sdk.local import BundleRejected, LocalPolicy, public_keys
from aigos.sdk.models import Decision, Identity
from aigos.sdk.retry import RetryPolicy
from aigos.sdk.transport import HttpResponse, SyncTransport, raise_for_problem

log = logging.getLogger("aigos.sdk")

#: How long ``close()`` waits for a pending TERMINATE to arrive and be acknowledged.
TERMINATE_GRACE = 2.0


class AigosClient(ClientCore):
    """The AIGOS client for threads and plain functions.

    ``AigosClient(api_key=..., base_url=..., asset_card_id=...)``; any option not given is read from
    ``AIGOS_<OPTION>`` (see ``ClientConfig``). The newest client becomes the default of ``@guard``
    unless ``set_default=False``. Use it as a context manager, or call ``close()``: it flushes telemetry.
    """

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
        self.transport = SyncTransport(
            config.base_url,
            timeout=config.timeout,
            retry=RetryPolicy(config.max_retries, config.backoff_base, config.backoff_max),
        )
        self.listener: KillSwitchListener | None = None
        self._closed = False
        self._background: threading.Thread | None = None
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._last_heartbeat = 0.0
        self._last_bundle = 0.0
        self._atexit = _closer(weakref.ref(self))
        atexit.register(self._atexit)
        if set_default:
            defaults.set_default_client(self)
        if self.agent_id and (self.can_refresh or self._token):
            self._start_background()

    # -- identity -------------------------------------------------------------------------------------

    def register(self, name: str, capabilities: dict[str, Any] | None = None, **fields: Any) -> Identity:
        """Register an agent with the admin API key; this client then acts as it. The secret is shown once."""
        body = self._registration(name, capabilities, fields)
        upload = self._card_upload()
        if upload is not None:
            # Saved by its id: an unchanged card changes nothing, a changed one is a new version.
            path, headers, content = upload
            raise_for_problem(self.transport.request("POST", path, content=content, headers=headers))
        response = self.transport.request(
            "POST",
            "/v1/agents/register",
            json=body,
            headers=self._admin_headers(),
        )
        raise_for_problem(response)
        identity = Identity.from_registration(response.json())
        self._adopt_identity(identity)
        self._start_background()
        if self.config.local_evaluation:
            self.refresh_bundle()
        return identity

    def token(self) -> str:
        """A valid access token, refreshed through ``/oauth2/token`` before it expires."""
        token = self._token
        if token is not None and self._token_is_fresh():
            return token
        with self._token_lock:
            if self._token is not None and self._token_is_fresh():
                return self._token
            if not self.can_refresh and self._token is not None:
                return self._token  # nothing to refresh with: let the server judge it
            return self._fetch_token()

    def refresh_token(self) -> str:
        """Get a new access token now."""
        with self._token_lock:
            return self._fetch_token()

    def _fetch_token(self) -> str:
        response = self.transport.request("POST", "/oauth2/token", form=self._token_form())
        return self._take_token_response(response)

    def agent_request(self, method: str, path: str, json: Any = None) -> HttpResponse:
        """A request with the agent's token; on a 401 for an expired or revoked token, refresh once."""
        stale = self.token()
        response = self.transport.request(
            method, path, json=json, headers={"Authorization": f"Bearer {stale}"}
        )
        if response.status == 401 and self.can_refresh:
            try:
                raise_for_problem(response)
            except AuthenticationError as exc:
                if not self._refreshable(exc):
                    return response
            with self._token_lock:
                fresh = self._token if self._token != stale else self._fetch_token()
            response = self.transport.request(
                method, path, json=json, headers={"Authorization": f"Bearer {fresh}"}
            )
        return response

    # -- checks ---------------------------------------------------------------------------------------

    def check(
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
        """Ask the policy engine (or the local bundle) whether the agent may do this. Never raises for a
        denial: see ``Decision.allowed``. Raises ``AigosUnavailable`` when unreachable (unless fail-open)."""
        if not trace and not context:
            decided = self._local_decision(action, resource, tool, domain, estimated_cost)
            if decided is not None:
                return decided
        body = self._check_body(action, resource, tool, domain, estimated_cost, context, trace)
        carried = self._carry(body)
        while True:  # twice at most: again without the telemetry when the token may not write it
            try:
                return self._decision_from(self.agent_request("POST", "/v1/policies/check", body))
            except AigosUnavailable as exc:
                self._carry_failed(body, carried, exc)
                return self._unreachable(exc, "policy check")
            except AigosError as exc:
                if not self._carry_failed(body, carried, exc):
                    raise
                carried = []

    # -- local evaluation -----------------------------------------------------------------------------

    def refresh_bundle(self) -> bool:
        """Fetch (or revalidate by ETag) the signed policy bundle; True if a new one is in use."""
        self._last_bundle = time.monotonic()
        headers = {"Authorization": f"Bearer {self.token()}"}
        if self.local is not None and self.local.etag:
            headers["If-None-Match"] = self.local.etag
        response = self.transport.request("GET", "/v1/policies/bundle", headers=headers)
        if response.status == 304:
            return False
        raise_for_problem(response)
        keys = public_keys(self.transport.request("GET", "/v1/policies/keys").json() or {})
        try:
            self.local = LocalPolicy.load(response.json(), keys, response.headers.get("etag"))
        except BundleRejected:
            self.local = None
            raise
        return True

    # -- heartbeat, telemetry -------------------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        """Tell the server the agent is alive; returns ``{agent_id, status, server_time}``."""
        response = self.agent_request("POST", f"/v1/agents/{self.agent_id}/heartbeat")
        if response.status == 401:
            self._decision_from(response)  # raises, and applies a termination the server reports
        raise_for_problem(response)
        body: dict[str, Any] = response.json()
        return body

    def report(self, event_type: str, data: dict[str, Any] | None = None, **ids: str | None) -> None:
        """Queue a telemetry event (sent in batches): ``tool.*``, ``llm.*``, ``custom.*``, ..."""
        if self.config.telemetry_enabled:
            self.telemetry.add(event_type, data, trace_id=ids.get("trace_id"), span_id=ids.get("span_id"))

    def flush(self) -> int:
        """Send every queued event now; returns how many were accepted."""
        sent = 0
        with self._flush_lock:
            while len(self.telemetry):
                batch = self.telemetry.take()
                try:
                    response = self.agent_request("POST", "/v1/telemetry", {"events": batch})
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

    def _start_background(self) -> None:
        if self._background is None and not self._closed:
            self._background = threading.Thread(target=self._loop, name="aigos-background", daemon=True)
            self._background.start()

    def _loop(self) -> None:
        config = self.config
        tick = min(config.heartbeat_interval, config.telemetry_interval, config.bundle_refresh, 1.0)
        last_flush = time.monotonic()
        while not self._stop.is_set():
            self.telemetry.wake.wait(tick)
            self.telemetry.wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            try:
                if len(self.telemetry) >= self.telemetry.batch_size or (
                    len(self.telemetry) and now - last_flush >= config.telemetry_interval
                ):
                    last_flush = now
                    self.flush()
                if now - self._last_heartbeat >= config.heartbeat_interval and not self.control.terminated:
                    self._last_heartbeat = now
                    self.heartbeat()
                if config.local_evaluation and now - self._last_bundle >= config.bundle_refresh:
                    self.refresh_bundle()
            except AigosError as exc:
                log.warning("aigos background work failed: %s", exc)
            except Exception:
                log.exception("aigos background work failed")

    # -- kill switch ----------------------------------------------------------------------------------

    def on_kill_switch(self, handler: Handler | None = None) -> KillSwitchListener:
        """Listen for kill-switch commands in a thread. Without a handler, TERMINATE makes guarded calls
        raise ``AgentTerminated`` and then ends the process (SIGTERM, after flushing telemetry; set
        ``on_terminate="raise"`` to keep it alive); PAUSE makes guarded calls wait until RESUME."""
        if self.listener is not None and self.listener.running:
            self.listener.handler = handler
            return self.listener
        self.token()  # fail here, not in the thread, if there is no identity
        self.listener = KillSwitchListener(self, handler).start()
        self.listening = True
        return self.listener

    # -- lifecycle ------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """End this process gracefully, as a TERMINATE does by default: flush telemetry, then SIGTERM to
        ourselves, so the application's signal handlers, ``finally`` blocks and ``atexit`` hooks run."""
        try:
            self.flush()
        except AigosError as exc:
            log.warning("telemetry flush before exit failed: %s", exc)
        default_exit()

    def close(self) -> None:
        """Stop background work, flush telemetry, close connections. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        self._stop.set()
        self.telemetry.wake.set()
        if self.listener is not None:
            if self.control.terminated and self.listener.running:
                # Termination learnt from a refused call: let the stream deliver and ack the TERMINATE.
                self.listener.thread.join(TERMINATE_GRACE)
            self.listener.stop()
        if self._background is not None and self._background is not threading.current_thread():
            self._background.join(2.0)
        if len(self.telemetry) and self.agent_id:
            try:
                self.flush()
            except AigosError as exc:
                log.warning("aigos: %d telemetry events not sent at close: %s", len(self.telemetry), exc)
        self.transport.close()
        defaults.forget(self)

    def __enter__(self) -> AigosClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _closer(ref: weakref.ReferenceType[AigosClient]) -> Callable[[], None]:
    # A weak reference: registering the client itself with atexit would keep every client alive forever.
    def close() -> None:
        client = ref()
        if client is not None:
            client.close()

    return close
