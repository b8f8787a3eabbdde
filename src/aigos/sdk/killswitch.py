"""The kill-switch listener: an SSE client of ``GET /v1/kill-switch/stream`` that verifies, obeys and
acknowledges each command.

Every command is checked before it is obeyed: its Ed25519 signature against the keys published at
``/v1/kill-switch/keys``, its expiry, that it names this agent, and (``ReplayGuard``) that it is new and in
sequence. Each stream opens with the server's signed anchor, the highest sequence the agent has
acknowledged: the replay floor is raised to it, so a restarted process (whose memory is empty) still refuses
an old command that a newer one superseded. The stream is resumed with ``Last-Event-ID``; a dropped
connection is retried with exponential backoff and jitter. A thread runs it for ``AigosClient``, a task for
``AsyncAigosClient``.

Fleet commands (``event: kill-switch-fleet``: one command for every agent of a tenant, or of a lineage)
are verified the same way, plus: the tenant is ours and the scope covers us. The anchor tells the agent
its tenant and its ancestors (signed by the server), so a lineage command counts when its root is the
agent or one of them. A fleet command that fails any check is ignored and reported: logged at warning and
acknowledged as ``rejected`` with the reason (the server refuses that acknowledgement when the command
is not one of our tenant's, which is logged too). One that passes is obeyed with the same handlers as an
agent's own command and acknowledged once by this agent.

The sync and async listeners stay side by side in this one module (a little over the house's ~450 lines)
so that each step of one can be read against the same step of the other; what they share is above them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from aigos.core.commands import (
    ACK_OUTCOMES,
    CommandRejected,
    FleetCommand,
    ReplayGuard,
    SignedCommand,
    StreamAnchor,
    verify_anchor,
    verify_command,
    verify_fleet_command,
)
from aigos.sdk.errors import AigosError, AigosUnavailable, AuthenticationError
from aigos.sdk.local import public_keys
from aigos.sdk.models import KillSwitchCommand
from aigos.sdk.retry import RetryPolicy
from aigos.sdk.sse import SseEvent, SseParser, read_lines

if TYPE_CHECKING:
    from aigos.sdk.aclient import AsyncAigosClient
    from aigos.sdk.client import AigosClient

log = logging.getLogger("aigos.sdk")

STREAM = "/v1/kill-switch/stream"
FLEET_EVENT = "kill-switch-fleet"
KEYS = "/v1/kill-switch/keys"
#: Longer than the server's 15 s keep-alive comments: silence beyond it means the connection is dead.
READ_TIMEOUT = 45.0
#: No limit: the listener reconnects for as long as it runs; an established stream starts the waits over.
RECONNECT = RetryPolicy(max_retries=None, base=0.25, cap=30.0)

Handler = Callable[[KillSwitchCommand], Any]
AsyncHandler = Callable[[KillSwitchCommand], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing one event came to: the command (if valid), and how to acknowledge it."""

    command: KillSwitchCommand | None
    command_id: str | None
    ack: str | None
    detail: str | None = None


class CommandProcessor:
    """Verifies and applies commands to a client's ``AgentControl`` (shared by the thread and the task)."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.keys: dict[str, bytes] = {}
        self.replay = ReplayGuard()
        self.last_event_id: str | None = None
        #: Our tenant and ancestors (parent first), from the last verified anchor: a fleet command must be
        #: our tenant's and its scope must include us.
        self.tenant_id: str | None = None
        self.ancestors: tuple[str, ...] = ()

    def parse(self, event: SseEvent) -> SignedCommand | Outcome:
        """The signed command in ``event``, or an ``Outcome`` to report a malformed one."""
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return Outcome(None, None, None, "not JSON")
        try:
            return SignedCommand.from_json(data)
        except CommandRejected as exc:
            command_id = data.get("command_id") if isinstance(data, dict) else None
            return Outcome(None, str(command_id) if command_id else None, "rejected", exc.code)

    def verify(self, command: SignedCommand) -> None:
        """Raise ``CommandRejected`` unless ``command`` is authentic, current, ours and new."""
        verify_command(self.keys, command, agent_id=self.agent_id)
        self.replay.check(command)

    def accept(self, command: SignedCommand) -> KillSwitchCommand:
        """Record ``command`` as obeyed."""
        self.replay.accept(command)
        return KillSwitchCommand.from_json(command.to_json())

    def parse_anchor(self, event: SseEvent) -> StreamAnchor | None:
        """The anchor in an ``opened`` event, or None (logged) if it is not one."""
        try:
            return StreamAnchor.from_json(orjson.loads(event.data))
        except (orjson.JSONDecodeError, CommandRejected) as exc:
            log.error("kill switch: malformed stream anchor ignored (%s)", exc)
            return None

    def anchor(self, anchor: StreamAnchor) -> None:
        """Raise the replay floor to ``anchor`` and learn our tenant and ancestors from it;
        ``CommandRejected`` if it is not the server's, for us."""
        verify_anchor(self.keys, anchor, agent_id=self.agent_id)
        self.replay.anchor(anchor)
        self.tenant_id = anchor.tenant_id
        self.ancestors = anchor.ancestors

    def parse_fleet(self, event: SseEvent) -> FleetCommand | Outcome:
        """The fleet command in ``event``, or an ``Outcome`` to report a malformed one."""
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return Outcome(None, None, None, "not JSON")
        try:
            return FleetCommand.from_json(data)
        except CommandRejected as exc:
            command_id = data.get("command_id") if isinstance(data, dict) else None
            return Outcome(None, str(command_id) if command_id else None, "rejected", exc.code)

    def verify_fleet(self, command: FleetCommand) -> None:
        """Raise ``CommandRejected`` unless the fleet command is authentic, current, for our tenant, covers
        us, and is new (``WRONG_TENANT`` while no anchor told us our tenant)."""
        verify_fleet_command(
            self.keys,
            command,
            tenant_id=self.tenant_id or "",
            agent_id=self.agent_id,
            ancestors=self.ancestors,
        )
        self.replay.check_fleet(command)

    def accept_fleet(self, command: FleetCommand) -> KillSwitchCommand:
        """Record the fleet command as obeyed; what handlers get (``raw`` holds the signed fleet command)."""
        self.replay.accept_fleet(command)
        raw = command.to_json()
        return KillSwitchCommand(
            command_id=command.command_id,
            agent_id=self.agent_id,
            command=command.command,
            reason=command.reason,
            issued_at=command.issued_at,
            sequence=command.sequence,
            raw=raw,
        )


def ack_of(command: KillSwitchCommand, outcome: str) -> tuple[str, str | None]:
    """The acknowledgement of ``command`` after it was applied with ``outcome``: the outcome itself if it
    belongs to the command, else ``rejected`` saying why (a PAUSE reaching an agent terminated earlier)."""
    if outcome in ACK_OUTCOMES[command.command]:
        return outcome, None
    return "rejected", f"the agent is already {outcome}"


def default_exit() -> None:
    """Shut this process down gracefully: SIGTERM runs the application's handlers (``sys.exit`` in a
    thread would only end that thread)."""
    os.kill(os.getpid(), signal.SIGTERM)


class KillSwitchListener:
    """The sync client's listener thread."""

    def __init__(self, client: AigosClient, handler: Handler | None) -> None:
        if not client.agent_id:
            raise AigosError("on_kill_switch needs an agent identity: register() or client credentials first")
        self.client = client
        self.handler = handler
        self.processor = CommandProcessor(client.agent_id)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, name="aigos-kill-switch", daemon=True)

    def start(self) -> KillSwitchListener:
        """Start listening in the background."""
        self.thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop listening (closes the stream so a blocked read returns at once)."""
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if threading.current_thread() is not self.thread and self.thread.is_alive():
            self.thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self.thread.is_alive()

    def _run(self) -> None:
        attempt = 0
        # Runs on after a termination learnt elsewhere (a 401 on a check): the TERMINATE itself is still
        # pending on the stream and must be acknowledged; the server closes the stream after it.
        while not self._stop.is_set():
            try:
                if self._stream():
                    attempt = 0
            except AuthenticationError as exc:
                if exc.code in ("AGENT_TERMINATED", "AGENT_SUSPENDED", "AGENT_ARCHIVED"):
                    log.error("kill switch: the server says %s; stopping guarded calls", exc.code)
                    self._terminate_locally(exc.message or exc.code)
                    return
                log.warning("kill switch stream refused: %s", exc)
            except (AigosError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                log.warning("kill switch stream lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
                self._sock = None
            if self._stop.is_set() or self.client.control.terminated:
                return
            self._stop.wait(RECONNECT.delay(attempt))
            attempt += 1

    def _with_fresh_keys(self, check: Callable[[Any], None], item: Any) -> None:
        """``check(item)``; if it names a key we do not hold (rotated since we loaded them), reload, retry."""
        try:
            check(item)
        except CommandRejected as exc:
            if exc.code != "UNKNOWN_KEY":
                raise
            self._refresh_keys()
            check(item)

    def _refresh_keys(self) -> None:
        response = self.client.transport.request("GET", KEYS)
        if response.status == 200:
            self.processor.keys = public_keys(response.json())

    def _stream(self) -> bool:
        """One connection: returns True if it was established (the backoff restarts)."""
        if not self.processor.keys:
            self._refresh_keys()
        token = self.client.token()
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
        }
        if self.processor.last_event_id:
            headers["Last-Event-ID"] = self.processor.last_event_id
        conn = self.client.transport.connect(timeout=READ_TIMEOUT)
        try:
            self._sock = conn.sock
            if self._stop.is_set():
                return False
            conn.request("GET", self.client.transport.url(STREAM), headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                body = response.read()
                error = _problem_error(response.status, body)
                if isinstance(error, AuthenticationError) and self.client._refreshable(error):
                    self.client.refresh_token()
                    return False
                raise error
            self.connected.set()
            parser = SseParser()
            for line in read_lines(response):
                event = parser.feed(line)
                if event is not None and event.event == "kill-switch":
                    self._handle(event)
                elif event is not None and event.event == FLEET_EVENT:
                    self._handle_fleet(event)
                elif event is not None and event.event == "opened":
                    self._anchor(event)
                if self._stop.is_set():
                    break
            return True
        finally:
            conn.close()

    def _anchor(self, event: SseEvent) -> None:
        anchor = self.processor.parse_anchor(event)
        if anchor is None:
            return
        try:
            self._with_fresh_keys(self.processor.anchor, anchor)
        except CommandRejected as exc:
            # Commands are still verified one by one; only the floor after a restart is lost.
            log.error("kill switch: stream anchor refused: %s", exc)

    def _handle(self, event: SseEvent) -> None:
        parsed = self.processor.parse(event)
        if isinstance(parsed, Outcome):
            log.error("kill switch: malformed command refused (%s)", parsed.detail)
            if parsed.command_id:
                self._ack(parsed.command_id, "rejected", parsed.detail)
            self.processor.last_event_id = event.id
            return
        try:
            self._with_fresh_keys(self.processor.verify, parsed)
        except CommandRejected as exc:
            self.processor.last_event_id = event.id
            if exc.code in ("REPLAYED", "OUT_OF_ORDER"):
                log.info("kill switch: ignoring %s command %s", exc.code, parsed.command_id)
                return
            log.error("kill switch: command %s refused: %s", parsed.command_id, exc)
            self._ack(parsed.command_id, "rejected", exc.code)
            return
        command = self.processor.accept(parsed)
        self.processor.last_event_id = event.id
        self._obey(command)

    def _handle_fleet(self, event: SseEvent) -> None:
        """A fleet command: obeyed if it passes every check, else ignored and reported."""
        parsed = self.processor.parse_fleet(event)
        if isinstance(parsed, Outcome):
            log.warning("kill switch: malformed fleet command ignored (%s)", parsed.detail)
            if parsed.command_id:
                self._ack(parsed.command_id, "rejected", parsed.detail)
            return
        try:
            self._with_fresh_keys(self.processor.verify_fleet, parsed)
        except CommandRejected as exc:
            if exc.code in ("REPLAYED", "OUT_OF_ORDER"):
                log.info("kill switch: ignoring %s fleet command %s", exc.code, parsed.command_id)
                return
            log.warning("kill switch: fleet command %s ignored: %s", parsed.command_id, exc)
            self._ack(parsed.command_id, "rejected", exc.code)
            return
        self._obey(self.processor.accept_fleet(parsed))

    def _obey(self, command: KillSwitchCommand) -> None:
        ack, detail = ack_of(command, self.client.control.apply(command.command, command.reason))
        log.warning("kill switch: %s obeyed (%s)", command.command, command.reason)
        self._ack(command.command_id, ack, detail)
        if self.handler is not None:
            try:
                self.handler(command)
            except Exception:
                log.exception("kill switch handler failed")
        if command.command == "TERMINATE":
            self._after_terminate()

    def _ack(self, command_id: str, outcome: str, detail: str | None) -> None:
        body: dict[str, Any] = {"outcome": outcome}
        if detail:
            body["detail"] = detail
        try:
            response = self.client.agent_request("POST", f"/v1/kill-switch/commands/{command_id}/ack", body)
            if response.status >= 400:
                log.warning("kill switch ack of %s answered %s", command_id, response.status)
        except AigosError as exc:
            log.warning("kill switch ack of %s failed: %s", command_id, exc)

    def _terminate_locally(self, reason: str) -> None:
        self.client.control.apply("TERMINATE", reason)
        self._after_terminate()

    def _after_terminate(self) -> None:
        self._stop.set()
        if self.handler is None and self.client.config.on_terminate == "exit":
            self.client.shutdown()  # flushes first: the last calls' outcomes must not die with the process
            return
        try:
            self.client.flush()
        except AigosError as exc:
            log.warning("telemetry flush after TERMINATE failed: %s", exc)


def _problem_error(status: int, body: bytes) -> AigosError:
    from aigos.sdk.transport import HttpResponse, raise_for_problem

    try:
        raise_for_problem(HttpResponse(status, {}, body))
    except AigosError as exc:
        return exc
    return AigosUnavailable(f"unexpected status {status}", status=status)


class AsyncKillSwitchListener:
    """The async client's listener task."""

    def __init__(self, client: AsyncAigosClient, handler: AsyncHandler | None) -> None:
        if not client.agent_id:
            raise AigosError("on_kill_switch needs an agent identity: register() or client credentials first")
        self.client = client
        self.handler = handler
        self.processor = CommandProcessor(client.agent_id)
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> AsyncKillSwitchListener:
        """Start the task on the running loop."""
        self.task = asyncio.get_running_loop().create_task(self._run(), name="aigos-kill-switch")
        return self

    async def stop(self) -> None:
        """Cancel the task and wait for it."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        attempt = 0
        while not self._stopped:
            try:
                if await self._stream():
                    attempt = 0
            except AuthenticationError as exc:
                if exc.code in ("AGENT_TERMINATED", "AGENT_SUSPENDED", "AGENT_ARCHIVED"):
                    self.client.control.apply("TERMINATE", exc.message or exc.code)
                    await self._after_terminate()
                    return
                log.warning("kill switch stream refused: %s", exc)
            except (AigosError, httpx.HTTPError, OSError, ValueError) as exc:
                log.warning("kill switch stream lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
            if self.client.control.terminated:
                return
            await asyncio.sleep(RECONNECT.delay(attempt))
            attempt += 1

    async def _with_fresh_keys(self, check: Callable[[Any], None], item: Any) -> None:
        """``check(item)``; if it names a key we do not hold (rotated since we loaded them), reload, retry."""
        try:
            check(item)
        except CommandRejected as exc:
            if exc.code != "UNKNOWN_KEY":
                raise
            await self._refresh_keys()
            check(item)

    async def _refresh_keys(self) -> None:
        response = await self.client.transport.request("GET", KEYS)
        if response.status == 200:
            self.processor.keys = public_keys(response.json())

    async def _stream(self) -> bool:
        if not self.processor.keys:
            await self._refresh_keys()
        token = await self.client.token()
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
        }
        if self.processor.last_event_id:
            headers["Last-Event-ID"] = self.processor.last_event_id
        timeout = httpx.Timeout(self.client.config.timeout, read=READ_TIMEOUT)
        async with self.client.transport.client.stream(
            "GET", STREAM, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                error = _problem_error(response.status_code, await response.aread())
                if isinstance(error, AuthenticationError) and self.client._refreshable(error):
                    await self.client.refresh_token()
                    return False
                raise error
            self.connected.set()
            parser = SseParser()
            async for line in response.aiter_lines():
                event = parser.feed(line.rstrip("\r\n"))
                if event is not None and event.event == "kill-switch":
                    await self._handle(event)
                elif event is not None and event.event == FLEET_EVENT:
                    await self._handle_fleet(event)
                elif event is not None and event.event == "opened":
                    await self._anchor(event)
                if self._stopped:
                    break
        return True

    async def _anchor(self, event: SseEvent) -> None:
        anchor = self.processor.parse_anchor(event)
        if anchor is None:
            return
        try:
            await self._with_fresh_keys(self.processor.anchor, anchor)
        except CommandRejected as exc:
            log.error("kill switch: stream anchor refused: %s", exc)

    async def _handle(self, event: SseEvent) -> None:
        parsed = self.processor.parse(event)
        if isinstance(parsed, Outcome):
            if parsed.command_id:
                await self._ack(parsed.command_id, "rejected", parsed.detail)
            self.processor.last_event_id = event.id
            return
        try:
            await self._with_fresh_keys(self.processor.verify, parsed)
        except CommandRejected as exc:
            self.processor.last_event_id = event.id
            if exc.code not in ("REPLAYED", "OUT_OF_ORDER"):
                log.error("kill switch: command %s refused: %s", parsed.command_id, exc)
                await self._ack(parsed.command_id, "rejected", exc.code)
            return
        command = self.processor.accept(parsed)
        self.processor.last_event_id = event.id
        await self._obey(command)

    async def _handle_fleet(self, event: SseEvent) -> None:
        """A fleet command: obeyed if it passes every check, else ignored and reported."""
        parsed = self.processor.parse_fleet(event)
        if isinstance(parsed, Outcome):
            log.warning("kill switch: malformed fleet command ignored (%s)", parsed.detail)
            if parsed.command_id:
                await self._ack(parsed.command_id, "rejected", parsed.detail)
            return
        try:
            await self._with_fresh_keys(self.processor.verify_fleet, parsed)
        except CommandRejected as exc:
            if exc.code in ("REPLAYED", "OUT_OF_ORDER"):
                log.info("kill switch: ignoring %s fleet command %s", exc.code, parsed.command_id)
                return
            log.warning("kill switch: fleet command %s ignored: %s", parsed.command_id, exc)
            await self._ack(parsed.command_id, "rejected", exc.code)
            return
        await self._obey(self.processor.accept_fleet(parsed))

    async def _obey(self, command: KillSwitchCommand) -> None:
        ack, detail = ack_of(command, self.client.control.apply(command.command, command.reason))
        log.warning("kill switch: %s obeyed (%s)", command.command, command.reason)
        await self._ack(command.command_id, ack, detail)
        if self.handler is not None:
            try:
                result = self.handler(command)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("kill switch handler failed")
        if command.command == "TERMINATE":
            await self._after_terminate()

    async def _ack(self, command_id: str, outcome: str, detail: str | None) -> None:
        body: dict[str, Any] = {"outcome": outcome}
        if detail:
            body["detail"] = detail
        try:
            await self.client.agent_request("POST", f"/v1/kill-switch/commands/{command_id}/ack", body)
        except AigosError as exc:
            log.warning("kill switch ack of %s failed: %s", command_id, exc)

    async def _after_terminate(self) -> None:
        self._stopped = True
        if self.handler is None and self.client.config.on_terminate == "exit":
            await self.client.shutdown()
            return
        try:
            await self.client.flush()
        except AigosError as exc:
            log.warning("telemetry flush after TERMINATE failed: %s", exc)
