"""FastAPI dependencies of the admin plane: the caller's principal, scopes, and a tenant-bound session.

Every admin-plane request goes through ``get_principal``: it resolves the bearer credential, binds the
request's database transaction to the caller's tenant (row-level security on PostgreSQL), applies the rate
limits, counts the call, and names the tenant in the access log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from aigos.server.db.database import set_tenant
from aigos.server.deps import RuntimeDep, SessionDep
from aigos.server.errors import Forbidden
from aigos.server.tenancy import ratelimit
from aigos.server.tenancy.principal import Principal, invalid_credential, resolve

bearer = HTTPBearer(auto_error=False, description="An API key `aigos_sk_...` or the platform-admin token.")


async def get_principal(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The authenticated caller; 401 without a valid bearer credential, 429 past a rate limit."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise invalid_credential("Send `Authorization: Bearer <API key>`.", code="UNAUTHENTICATED")
    principal = await resolve(session, credentials.credentials, runtime.settings.pepper)
    if principal.tenant_id is not None:
        await set_tenant(session, principal.tenant_id)
        request.state.tenant_id = str(principal.tenant_id)
    response.headers.update(await ratelimit.enforce(runtime.limiter, runtime.settings, principal))
    if principal.tenant_id is not None:
        runtime.usage.count(principal.tenant_id, "api_calls")
        if principal.api_key_id is not None:
            runtime.key_activity.touch(principal.tenant_id, principal.api_key_id)
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
    runtime: RuntimeDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal | None:
    """The caller if it sent a credential (which must then be valid), else None (anonymous)."""
    if credentials is None:
        return None
    return await get_principal(request, response, runtime, session, credentials)


OptionalPrincipalDep = Annotated[Principal | None, Depends(get_optional_principal)]
