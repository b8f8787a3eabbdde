"""Token revocation (RFC 7009): a client revokes the access tokens issued to it, and a parent agent also
those it obtained for a child; every replica then refuses them until they expire.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.server.audit.events import NewEvent, current_request_id
from aigos.server.db.database import set_tenant
from aigos.server.errors import OAuthError
from aigos.server.identity import tokens
from aigos.server.identity.models import RevokedToken
from aigos.server.identity.oauth import Client, OAuthServer


async def revoke(oauth: OAuthServer, session: AsyncSession, caller: Client, token: str, issuer: str) -> None:
    """Revoke ``token`` for ``caller``. A token that does not verify or belongs to another tenant is left
    alone without a word (RFC 7009 section 2.2); one of the tenant's tokens not issued to the caller is
    ``unauthorized_client``."""
    try:
        claims = tokens.verify(oauth.keys, token, issuer)
    except tokens.InvalidToken:
        return
    if str(claims.get("aud")) != str(caller.tenant_id):
        return
    # RFC 7009 2.1: a client revokes tokens issued to itself; a parent also those it obtained for a child.
    issued_to = {str(claims.get("client_id")), str((claims.get("act") or {}).get("sub"))}
    if str(caller.agent_id) not in issued_to:
        raise OAuthError("unauthorized_client", "The token was not issued to this client.")
    await revoke_jti(
        session,
        caller.tenant_id,
        uuid.UUID(str(claims["sub"])),
        str(claims["jti"]),
        float(claims["exp"]),
    )
    await oauth.events.record(
        NewEvent(
            tenant_id=caller.tenant_id,
            event_type="agent.token_revoked",
            actor_type="agent",
            actor_id=str(caller.agent_id),
            agent_id=str(claims["sub"]),
            data={"jti": claims["jti"]},
            request_id=current_request_id(),
        ),
        session,
    )
    # Announced before the commit: if the commit then failed, replicas would refuse a token the database
    # still allows (until their next resync), never the other way round.
    await oauth.identity.announce_revoked(str(claims["jti"]), float(claims["exp"]))


async def revoke_jti(
    session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, jti: str, exp: float
) -> None:
    """Store a token revocation (idempotent); the caller announces it after committing."""
    await set_tenant(session, tenant_id)
    values = {
        "jti": jti,
        "tenant_id": tenant_id,
        "agent_id": agent_id,
        "expires_at": datetime.fromtimestamp(exp, UTC),
        "revoked_at": datetime.now(UTC),
    }
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(insert(RevokedToken).values(values).on_conflict_do_nothing(index_elements=["jti"]))
