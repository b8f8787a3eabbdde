"""The grants the token endpoint serves: client credentials (RFC 6749 section 4.4, the client authenticated
by secret or by a ``private_key_jwt`` assertion, RFC 7523) and token exchange (RFC 8693), by which a parent
agent obtains a token for one of its children whose capabilities are within its own.

Each grant checks its request, issues the signed token and records it; the token endpoint only parses the
form and answers. Refusals are ``OAuthError``.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import delegation
from aigos.core.agents import may_hold_tokens
from aigos.server.db.database import set_tenant
from aigos.server.errors import OAuthError, Unauthenticated
from aigos.server.identity import tokens
from aigos.server.identity.models import Agent
from aigos.server.identity.oauth import (
    Client,
    OAuthServer,
    agent_of,
    authenticate,
    invalid_client,
    record_agent_event,
    record_failure,
)
from aigos.server.identity.state import CachedClient

CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
GRANT_TYPES = (CLIENT_CREDENTIALS, TOKEN_EXCHANGE)


def scope_of(requested: str | None) -> str:
    """The granted scope for a requested one: the default when none, ``invalid_scope`` when unknown."""
    if not requested:
        return tokens.DEFAULT_SCOPE
    wanted = requested.split()
    unknown = [scope for scope in wanted if scope not in tokens.AGENT_SCOPES]
    if unknown:
        raise OAuthError("invalid_scope", f"Unknown scope: {' '.join(unknown)}.")
    return " ".join(dict.fromkeys(wanted))


async def client_credentials(
    oauth: OAuthServer,
    session: AsyncSession,
    form: dict[str, str],
    authorization: str | None,
    source: str,
    issuer: str,
) -> tokens.Issued:
    """A token for the authenticated client itself; failed authentications go on its tenant's record."""
    try:
        client = await authenticate(oauth, session, form, authorization, source, issuer)
    except OAuthError as error:
        await record_failure(oauth, session, form, authorization, error)
        raise
    oauth.credential_used.touch(client.tenant_id, client.credential_id)
    agent = await _claims_source(oauth, session, client)
    issued = tokens.sign(
        oauth.keys,
        tokens.claims_for(agent, issuer, oauth.settings.token_ttl_seconds, scope_of(form.get("scope"))),
    )
    record_agent_event(
        oauth,
        client.tenant_id,
        "agent.token_issued",
        client.agent_id,
        method=client.method,
        credential_id=str(client.credential_id),
        jti=issued.claims["jti"],
    )
    oauth.agent_auth_seen.touch(agent.tenant_id, agent.id)
    return issued


async def _claims_source(oauth: OAuthServer, session: AsyncSession, client: Client) -> tokens.ClaimsSource:
    """The agent a token is issued for: from the client cache when possible, else the database (and then
    cached). The agent's status is checked either way, against the replica's live identity state."""
    basic = client.method == "client_secret_basic"
    if client.agent is not None:
        status = oauth.identity.status_of(client.agent_id)
        if not may_hold_tokens(status):
            raise invalid_client(f"The agent is {status.value}.", basic)
        return client.agent
    agent = await agent_of(session, client)
    if client.secret_digest is not None:
        snapshot = tokens.AgentSnapshot.of(agent)
        oauth.identity.remember_client(
            client.secret_digest, CachedClient(client.credential_id, client.secret_expires_at, snapshot)
        )
    return agent


async def token_exchange(
    oauth: OAuthServer, session: AsyncSession, form: dict[str, str], issuer: str
) -> tokens.Issued:
    """A token for a child agent, acting for the parent whose token is the ``subject_token``."""
    if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
        raise OAuthError("invalid_request", f"subject_token_type must be {ACCESS_TOKEN_TYPE}.")
    if form.get("requested_token_type") not in (None, ACCESS_TOKEN_TYPE):
        raise OAuthError("invalid_request", "Only access tokens can be requested.")
    try:
        parent = await oauth.agents.authenticate(form.get("subject_token", ""), issuer)
    except Unauthenticated as exc:
        raise OAuthError("invalid_grant", f"subject_token: {exc.detail}") from exc
    try:
        child_id = uuid.UUID(form.get("requested_agent", ""))
    except ValueError as exc:
        raise OAuthError("invalid_request", "requested_agent must be the child agent's id.") from exc
    await set_tenant(session, parent.tenant_id)
    child = await session.scalar(
        select(Agent).where(Agent.id == child_id, Agent.tenant_id == parent.tenant_id)
    )
    if child is None or child.parent_id != parent.agent_id:
        raise OAuthError("invalid_target", "requested_agent is not a child of the subject.")
    if not may_hold_tokens(child.status):
        raise OAuthError("invalid_target", f"The child agent is {child.status}.")
    if child.lineage_depth > oauth.settings.max_lineage_depth:
        raise OAuthError("invalid_target", "DEPTH_EXCEEDED: the lineage is deeper than allowed.")
    problems = delegation.escalations(parent.claims.get("aigos:capabilities", {}), child.capabilities)
    if problems:
        raise OAuthError(
            "invalid_target", "PRIVILEGE_ESCALATION: child exceeds parent: " + "; ".join(problems)
        )
    parent_scopes = set(str(parent.claims.get("scope", "")).split())
    scope = scope_of(form.get("scope") or " ".join(s for s in tokens.AGENT_SCOPES if s in parent_scopes))
    if not set(scope.split()) <= parent_scopes:
        raise OAuthError("invalid_scope", "A child token cannot have scopes its parent lacks.")
    # The child token acts for the parent's, so it ends when that one does (revoked, or expired).
    not_after = int(parent.claims["exp"])
    if not_after <= time.time():
        raise OAuthError("invalid_grant", "subject_token: the token has expired.")
    claims = tokens.claims_for(
        child,
        issuer,
        oauth.settings.token_ttl_seconds,
        scope,
        delegation=delegation.delegated(parent.claims, str(parent.agent_id)),
        not_after=not_after,
    )
    issued = tokens.sign(oauth.keys, claims)
    record_agent_event(
        oauth,
        parent.tenant_id,
        "agent.token_exchanged",
        child.id,
        parent_id=str(parent.agent_id),
        jti=issued.claims["jti"],
    )
    oauth.agent_auth_seen.touch(child.tenant_id, child.id)
    return issued
