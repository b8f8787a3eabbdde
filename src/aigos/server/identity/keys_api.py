"""Platform-admin routes over the token-signing keys: list them, and rotate without downtime.

A rotation makes a new active key and retires the others; a retired key stays in the JWKS until every
token it signed has expired (``publish_until``), so no agent's token stops verifying. The other replicas
are told on the bus (channel ``identity``, message ``{"type": "keys"}``) and reload the keys; one that
misses the message reloads when it first sees a token with an unknown ``kid``.

Signing keys belong to the platform, not to a tenant, so rotations go to the structured log, not to a
tenant's event log.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends

from aigos.server.deps import DatabaseDep
from aigos.server.errors import Forbidden
from aigos.server.identity.deps import IdentityStateDep, SigningKeysDep
from aigos.server.identity.keys import list_keys
from aigos.server.identity.schemas import SigningKeyList
from aigos.server.principal import Principal
from aigos.server.routing import ValidatedRoute
from aigos.server.tenancy.deps import PrincipalDep

router = APIRouter(prefix="/v1/admin/signing-keys", tags=["admin"], route_class=ValidatedRoute)
log = structlog.get_logger("aigos.keys")


async def _platform_only(principal: PrincipalDep) -> Principal:
    if not principal.is_platform:
        raise Forbidden("Only the platform admin can manage signing keys.", code="PLATFORM_ONLY")
    return principal


PlatformAdmin = Annotated[Principal, Depends(_platform_only)]


@router.get("", response_model=SigningKeyList, summary="List signing keys")
async def get_signing_keys(
    database: DatabaseDep, keys: SigningKeysDep, principal: PlatformAdmin
) -> SigningKeyList:
    """Every token-signing key with its status and publication window (platform-admin token only)."""
    return await list_keys(database, keys)


@router.post("/rotate", response_model=SigningKeyList, summary="Rotate the signing key")
async def rotate_signing_key(
    database: DatabaseDep,
    keys: SigningKeysDep,
    identity: IdentityStateDep,
    principal: PlatformAdmin,
) -> SigningKeyList:
    """Sign new tokens with a new key; tokens signed before keep verifying until they expire.

    Every replica is told on the bus and reloads its keys. Platform-admin token only.
    """
    before = keys.active.kid
    kid = await keys.rotate()
    await identity.announce_keys()
    log.info("signing_key_rotation", actor=principal.actor_id, kid=kid, retired=before)
    return await list_keys(database, keys)
