"""FastAPI dependencies of the admin plane: the caller's principal, scopes, and what tenancy owns.

Every admin-plane request goes through ``get_principal``: it resolves the bearer credential, binds the
request's database transaction to the caller's tenant (row-level security on PostgreSQL), applies the rate
limits, counts the call, and names the tenant in the access log.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Protocol

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from aigos.server.db.database import set_tenant
from aigos.server.deps import LimiterDep, SessionDep, SettingsDep, UsageDep
from aigos.server.errors import Forbidden
from aigos.server.principal import Principal
from aigos.server.tenancy import ratelimit
from aigos.server.tenancy.passwords import Passwords
from aigos.server.tenancy.principal import PlatformTokens, invalid_credential, resolve
from aigos.server.touches import Touches

bearer = HTTPBearer(auto_error=False, description="An API key `aigos_sk_...` or the platform-admin token.")


class TenantChanges(Protocol):
    """Who must hear that a tenant's settings changed (the policy context reloads its sets with them)."""

    async def announce_tenant_changed(self, tenant_id: uuid.UUID) -> None:
        """Tell every replica, after the commit, that ``tenant_id``'s settings changed."""
        ...


# What tenancy's routes use, each its own dependency (``async`` for the reason given in ``server/deps.py``).


async def get_key_activity(request: Request) -> Touches:
    """When each API key was last used, buffered (``api_keys.last_used_at``)."""
    key_activity: Touches = request.app.state.runtime.key_activity
    return key_activity


async def get_passwords(request: Request) -> Passwords:
    """The members' password hasher."""
    passwords: Passwords = request.app.state.runtime.passwords
    return passwords


async def get_platform_tokens(request: Request) -> PlatformTokens:
    """The platform context's look-up of its admin tokens, wired by the app."""
    platform_tokens: PlatformTokens = request.app.state.platform_tokens
    return platform_tokens


async def get_tenant_changes(request: Request) -> TenantChanges:
    """Where a change of a tenant's settings is announced (the policy state, wired by the app)."""
    changes: TenantChanges = request.app.state.runtime.policy
    return changes


KeyActivityDep = Annotated[Touches, Depends(get_key_activity)]
PasswordsDep = Annotated[Passwords, Depends(get_passwords)]
PlatformTokensDep = Annotated[PlatformTokens, Depends(get_platform_tokens)]
TenantChangesDep = Annotated[TenantChanges, Depends(get_tenant_changes)]


async def get_principal(
    request: Request,
    response: Response,
    settings: SettingsDep,
    limiter: LimiterDep,
    usage: UsageDep,
    key_activity: KeyActivityDep,
    platform_tokens: PlatformTokensDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The authenticated caller; 401 without a valid bearer credential, 429 past a rate limit."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise invalid_credential("Send `Authorization: Bearer <API key>`.", code="UNAUTHENTICATED")
    principal = await resolve(session, credentials.credentials, settings.pepper, platform_tokens)
    if principal.tenant_id is not None:
        await set_tenant(session, principal.tenant_id)
        request.state.tenant_id = str(principal.tenant_id)
    response.headers.update(await ratelimit.enforce(limiter, settings, principal))
    if principal.tenant_id is not None:
        usage.count(principal.tenant_id, "api_calls")
        if principal.api_key_id is not None:
            key_activity.touch(principal.tenant_id, principal.api_key_id)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits callers holding ``scope`` (403 ``INSUFFICIENT_SCOPE`` otherwise)."""

    async def check(principal: PrincipalDep) -> Principal:
        if not principal.may(scope):
            raise Forbidden(
                f"This API key lacks the `{scope}` scope.", code="INSUFFICIENT_SCOPE", scope=scope
            )
        return principal

    check.__name__ = f"require_{scope.replace(':', '_')}"
    return check


def require_tenant(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    """Like ``require`` but for endpoints acting inside one tenant: the platform token is refused."""
    scoped = require(scope)

    # A default rather than Annotated: with postponed annotations FastAPI cannot see the local `scoped`.
    async def check(principal: Principal = Depends(scoped)) -> Principal:
        if principal.tenant_id is None:
            raise Forbidden("Use a tenant's API key for this endpoint.", code="TENANT_REQUIRED")
        return principal

    check.__name__ = f"require_tenant_{scope.replace(':', '_')}"
    return check


async def get_optional_principal(
    request: Request,
    response: Response,
    settings: SettingsDep,
    limiter: LimiterDep,
    usage: UsageDep,
    key_activity: KeyActivityDep,
    platform_tokens: PlatformTokensDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal | None:
    """The caller if it sent a credential (which must then be valid), else None (anonymous)."""
    if credentials is None:
        return None
    return await get_principal(
        request, response, settings, limiter, usage, key_activity, platform_tokens, session, credentials
    )


OptionalPrincipalDep = Annotated[Principal | None, Depends(get_optional_principal)]
