"""MCP: ``guard_mcp_server(server)`` checks every ``tools/call`` of an MCP server (mcp 2.x ``MCPServer``,
the successor of ``FastMCP``) before the tool runs, with the caller's identity.

    from mcp.server.mcpserver import MCPServer
    from aigos.sdk import AsyncAigosClient
    from aigos.sdk.integrations.mcp import guard_mcp_server

    server = MCPServer("research-tools")
    ...
    guard_mcp_server(server, client=AsyncAigosClient(client_id=..., client_secret=...))

**Whose identity.** If the call carries an agent token -- ``Authorization: Bearer <token>`` on an HTTP
transport, or ``_meta["io.aigos/authorization"]`` on any transport -- the check is made as that agent
(its capabilities, policies, kill-switch state). Otherwise as the server's own agent (``client``).

A refused call never reaches the tool: it answers a tool result with ``is_error`` and the reason (the
MCP way to tell a model a tool failed), or raises with ``on_denied="raise"``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from aigos.sdk._core import DEFAULT_ACTION
from aigos.sdk.aclient import AsyncAigosClient
from aigos.sdk.client import AigosClient
from aigos.sdk.guard import AnyClient, Guarded
from aigos.sdk.integrations._common import REFUSALS, CostFromArgs, FromArgs, from_args, refusal_message

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

META_KEY = "io.aigos/authorization"
MAX_CALLERS = 256


class AigosMcpMiddleware:
    """Server middleware (``MCPServer.middleware``) guarding ``tools/call``."""

    def __init__(
        self,
        client: AnyClient | None,
        *,
        action: str,
        resource: FromArgs,
        domain: FromArgs,
        cost: CostFromArgs,
        on_denied: Literal["error", "raise"],
    ) -> None:
        self.client = client
        self.action = action
        self.resource, self.domain, self.cost = from_args(resource), from_args(domain), from_args(cost)
        self.on_denied = on_denied
        self._callers: OrderedDict[str, AsyncAigosClient] = OrderedDict()

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        """Check ``tools/call`` requests; pass everything else through."""
        if getattr(ctx, "method", None) != "tools/call":
            return await call_next(ctx)
        params: Mapping[str, Any] = ctx.params or {}
        name = str(params.get("name") or "")
        arguments = params.get("arguments") or {}
        spec = Guarded(lambda: None, name, self.action, self.resource, self.domain, self.cost, self.client)
        caller = self._caller(ctx, params)
        try:
            aigos, decision = await spec.aadmit((arguments,), {}, client=caller)
        except REFUSALS as refused:
            if self.on_denied == "raise":
                raise
            return _error_result(refusal_message(refused))
        started = time.perf_counter()
        try:
            result = await call_next(ctx)
        except BaseException as exc:
            spec.report(aigos, decision, started, exc)
            raise
        failed = _is_error(result)
        spec.report(aigos, decision, started, RuntimeError("tool error") if failed else None)
        return result

    def _caller(self, ctx: Any, params: Mapping[str, Any]) -> AnyClient | None:
        token = _token_of(ctx, params)
        if token is None:
            return None
        known = self._callers.get(token)
        if known is not None:
            self._callers.move_to_end(token)
            return known
        base = self.client or _default()
        caller = AsyncAigosClient(
            base_url=base.config.base_url,
            agent_token=token,
            timeout=base.config.timeout,
            fail_open=base.config.fail_open,
            heartbeat_interval=float("inf"),  # the caller is alive on its own: no beats on its behalf
            set_default=False,
        )
        caller.start()  # flushes the caller's telemetry in the background
        self._callers[token] = caller
        while len(self._callers) > MAX_CALLERS:
            _, oldest = self._callers.popitem(last=False)
            oldest.telemetry.wake.set()
        return caller

    async def aclose(self) -> None:
        """Flush and close the per-caller clients."""
        callers, self._callers = list(self._callers.values()), OrderedDict()
        for caller in callers:
            await caller.aclose()


def _default() -> AnyClient:
    from aigos.sdk.defaults import default_client

    return default_client()


def _token_of(ctx: Any, params: Mapping[str, Any]) -> str | None:
    header: Any = None
    request = getattr(ctx, "request", None)
    headers = getattr(request, "headers", None)
    if headers is not None:
        header = headers.get("authorization")
    if not header:
        for meta in (getattr(ctx, "meta", None), params.get("_meta")):
            if isinstance(meta, Mapping) and meta.get(META_KEY):
                header = meta[META_KEY]
                break
    if not isinstance(header, str):
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _is_error(result: Any) -> bool:
    if isinstance(result, Mapping):
        return bool(result.get("isError") or result.get("is_error"))
    return bool(getattr(result, "is_error", False))


def _error_result(text: str) -> Any:
    from mcp_types import CallToolResult, TextContent

    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def guard_mcp_server(
    server: MCPServer,
    *,
    client: AigosClient | AsyncAigosClient | None = None,
    action: str = DEFAULT_ACTION,
    resource: FromArgs = None,
    domain: FromArgs = None,
    cost: CostFromArgs = None,
    on_denied: Literal["error", "raise"] = "error",
) -> AigosMcpMiddleware:
    """Guard every tool of ``server`` (also tools added later); returns the installed middleware."""
    middleware = AigosMcpMiddleware(
        client, action=action, resource=resource, domain=domain, cost=cost, on_denied=on_denied
    )
    server.middleware.append(middleware)
    return middleware
