"""OAuth 2.0 client authentication for agents (RFC 6749 section 2.3, RFC 7523 ``private_key_jwt``),
throttled per client and per address, and the agent an authenticated client stands for.

Errors are raised as ``OAuthError`` and rendered in the RFC 6749 form by the app's handler.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import secrets
from aigos.core.agents import may_hold_tokens
from aigos.core.canonical import parse
from aigos.server.audit.events import NewEvent, current_request_id
from aigos.server.audit.log import EventLog
from aigos.server.bus import Counters, RateLimiter
from aigos.server.config import Settings
from aigos.server.db.database import set_tenant
from aigos.server.errors import OAuthError
from aigos.server.identity import credentials
from aigos.server.identity.agent_auth import AgentAuthenticator
from aigos.server.identity.keys import ALGORITHMS, SigningKeys
from aigos.server.identity.models import Agent, AgentCredential
from aigos.server.identity.state import IdentityState
from aigos.server.identity.tokens import AgentSnapshot
from aigos.server.throttle import Throttle, Throttled
from aigos.server.touches import Touches

JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Longest lifetime (exp - iat) of a client assertion. One hour, as Authlib and most client libraries issue
#: by default (Okta's limit too); each assertion is single-use, so a long one cannot be replayed anyway.
ASSERTION_MAX_LIFETIME = 3600


@dataclass(frozen=True, slots=True)
class OAuthServer:
    """What the OAuth 2.0 endpoints work with, built once per process: the settings (pepper, token
    lifetime, lineage bound, throttles), the signing keys, the identity state (client cache, statuses,
    revocations), the agent authenticator (subject tokens, introspection), the event log, the rate limiter
    for failed client authentications, the shared counters (single-use assertions) and the buffered
    "last used" stamps of credentials and agents."""

    settings: Settings
    keys: SigningKeys
    identity: IdentityState
    agents: AgentAuthenticator
    events: EventLog
    limiter: RateLimiter
    counters: Counters
    #: ``agent_credentials.last_used_at``: which secret or key authenticated at the token endpoint.
    credential_used: Touches
    #: ``agents.last_auth_at``: when each agent last obtained a token.
    agent_auth_seen: Touches


def invalid_client(description: str, basic: bool) -> OAuthError:
    """401 ``invalid_client``; with Basic auth, a ``WWW-Authenticate`` challenge as RFC 6749 5.2 requires."""
    headers = {"WWW-Authenticate": 'Basic realm="aigos"'} if basic else {}
    return OAuthError("invalid_client", description, 401, headers)


@dataclass(frozen=True)
class Client:
    """An authenticated OAuth client: an agent, and how it proved it."""

    agent_id: uuid.UUID
    tenant_id: uuid.UUID
    method: str
    credential_id: uuid.UUID
    #: For secret-authenticated clients: the secret's digest (the client cache key).
    secret_digest: str | None = None
    #: Set when the client came from the cache: the agent's claim fields, no database read needed.
    agent: AgentSnapshot | None = None
    secret_expires_at: float | None = None


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise invalid_client("Malformed Basic credentials.", basic=True) from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise invalid_client("Malformed Basic credentials.", basic=True)
    # RFC 6749 2.3.1: both parts are form-urlencoded before Base64.
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


async def authenticate(
    oauth: OAuthServer,
    session: AsyncSession,
    form: dict[str, str],
    authorization: str | None,
    source: str,
    issuer: str,
) -> Client:
    """The client making this request (``authorization``: its ``Authorization`` header, ``source``: its
    address), throttled: past too many failures per client id or per source address the caller gets 429
    before its credential is even looked at, so guessing a secret gains nothing."""
    throttle = Throttle(oauth.limiter, oauth.settings)
    buckets = throttle.sign_in("oauth", claimed_client_id(authorization, form) or "", source)
    try:
        await throttle.check(buckets, "failed client authentications")
    except Throttled as exc:
        raise OAuthError("temporarily_unavailable", str(exc), 429, exc.headers) from exc
    try:
        return await _authenticate_client(
            oauth, session, form, authorization, issuer + "/oauth2/token", issuer
        )
    except OAuthError as error:
        if error.error == "invalid_client":
            await throttle.record(buckets)
        raise


async def authenticate_agent(
    oauth: OAuthServer,
    session: AsyncSession,
    form: dict[str, str],
    authorization: str | None,
    source: str,
    issuer: str,
) -> Client:
    """``authenticate``, for an agent that may still hold tokens: a suspended or terminated agent keeps its
    secret but may no longer use the OAuth endpoints."""
    client = await authenticate(oauth, session, form, authorization, source, issuer)
    await agent_of(session, client)
    return client


async def agent_of(session: AsyncSession, client: Client) -> Agent:
    """The agent ``client`` authenticated as, read from the database; ``invalid_client`` unless it may
    hold tokens."""
    await set_tenant(session, client.tenant_id)
    agent = await session.scalar(
        select(Agent).where(Agent.id == client.agent_id, Agent.tenant_id == client.tenant_id)
    )
    # A client that authenticated with Basic gets the challenge RFC 6749 5.2 requires with every 401.
    basic = client.method == "client_secret_basic"
    if agent is None:
        raise invalid_client("Unknown client.", basic)
    if not may_hold_tokens(agent.status):
        raise invalid_client(f"The agent is {agent.status}.", basic)
    return agent


def claimed_client_id(authorization: str | None, form: dict[str, str]) -> str | None:
    """The client id the caller claims (Basic user name, form ``client_id``, or an assertion's unverified
    ``iss``), before any check."""
    try:
        basic = _basic(authorization)
    except OAuthError:
        basic = None
    if basic:
        return basic[0]
    if form.get("client_id") or "client_assertion" not in form:
        return form.get("client_id")
    try:
        return str(_client_id_from(form, form["client_assertion"]))
    except (OAuthError, ValueError):
        return None


async def record_failure(
    oauth: OAuthServer,
    session: AsyncSession,
    form: dict[str, str],
    authorization: str | None,
    error: OAuthError,
) -> None:
    """Put a failed authentication of a known agent on its tenant's record."""
    if error.status == 429:
        return  # refused before any check: nothing was attempted against the agent
    try:
        agent_id = uuid.UUID(str(claimed_client_id(authorization, form)))
    except ValueError:
        return
    tenant_id = await credentials.tenant_of_agent(session, agent_id)
    if tenant_id is not None:
        record_agent_event(
            oauth,
            tenant_id,
            "agent.authentication_failed",
            agent_id,
            error=error.error,
            reason=error.description,
        )


def record_agent_event(
    oauth: OAuthServer, tenant_id: uuid.UUID, event_type: str, agent_id: uuid.UUID, **data: Any
) -> None:
    """Enqueue an event the agent caused on its tenant's log (``...failed`` types record a failure)."""
    # Buffered: token traffic is high-volume; the event must never slow issuance down.
    outcome = "failure" if event_type.endswith("failed") else "success"
    oauth.events.enqueue(
        NewEvent(
            tenant_id=tenant_id,
            event_type=event_type,
            actor_type="agent",
            actor_id=str(agent_id),
            agent_id=str(agent_id),
            outcome=outcome,
            data=data,
            request_id=current_request_id(),
        )
    )


async def _authenticate_client(
    oauth: OAuthServer,
    session: AsyncSession,
    form: dict[str, str],
    authorization: str | None,
    token_endpoint: str,
    issuer: str,
) -> Client:
    """The client making this request, by exactly one of the supported methods."""
    basic = _basic(authorization)
    methods = [
        name
        for name, present in (
            ("client_secret_basic", basic is not None),
            ("client_secret_post", "client_secret" in form),
            ("private_key_jwt", "client_assertion" in form),
        )
        if present
    ]
    if len(methods) > 1:
        raise OAuthError("invalid_request", "Use exactly one client authentication method.")
    if not methods:
        raise invalid_client("Client authentication is required.", basic=False)
    if methods[0] == "private_key_jwt":
        return await _assertion_client(oauth, session, form, token_endpoint, issuer)
    client_id, secret = basic if basic is not None else (form.get("client_id", ""), form["client_secret"])
    if basic is not None and form.get("client_id") not in (None, client_id):
        raise OAuthError("invalid_request", "client_id differs from the authenticated client.")
    return await _secret_client(oauth, session, client_id, secret, methods[0], basic is not None)


async def _secret_client(
    oauth: OAuthServer, session: AsyncSession, client_id: str, secret: str, method: str, basic: bool
) -> Client:
    digest = secrets.digest(secret, oauth.settings.pepper)
    cached = oauth.identity.cached_client(digest)
    if cached is not None and str(cached.agent.id) == client_id:
        if cached.expires_at is not None and cached.expires_at <= time.time():
            raise invalid_client("This client secret has expired.", basic)
        return Client(
            cached.agent.id, cached.agent.tenant_id, method, cached.credential_id, digest, cached.agent
        )
    found = await credentials.find_by_secret(session, secret, oauth.settings.pepper)
    if found is None or str(found["agent_id"]) != client_id:
        raise invalid_client("Unknown client or wrong secret.", basic)
    if found["revoked_at"] is not None:
        raise invalid_client("This client secret was revoked.", basic)
    if found["expires_at"] is not None and found["expires_at"].timestamp() <= time.time():
        raise invalid_client("This client secret has expired.", basic)
    expires = found["expires_at"].timestamp() if found["expires_at"] is not None else None
    return Client(
        found["agent_id"], found["tenant_id"], method, found["credential_id"], digest, None, expires
    )


async def _assertion_client(
    oauth: OAuthServer, session: AsyncSession, form: dict[str, str], token_endpoint: str, issuer: str
) -> Client:
    if form.get("client_assertion_type") != JWT_BEARER_ASSERTION:
        raise OAuthError("invalid_request", f"client_assertion_type must be {JWT_BEARER_ASSERTION}.")
    assertion = form["client_assertion"]
    # The claimed client picks the keys to check the signature with; nothing else is read unverified.
    agent_id = _client_id_from(form, assertion)
    tenant_id = await credentials.tenant_of_agent(session, agent_id)
    if tenant_id is None:
        raise invalid_client("Unknown client.", basic=False)
    await set_tenant(session, tenant_id)
    rows = (
        await session.scalars(
            select(AgentCredential).where(
                AgentCredential.tenant_id == tenant_id,
                AgentCredential.agent_id == agent_id,
                AgentCredential.kind == "public_key",
            )
        )
    ).all()
    usable = [row for row in rows if credentials.usable(credentials.status_of(row)) and row.public_jwk]
    if not usable:
        raise invalid_client("The client has no registered public key.", basic=False)
    keys: list[Any] = [_import_public(row.public_jwk or {}) for row in usable]
    try:
        token = jwt.decode(assertion, KeySet(keys), algorithms=list(ALGORITHMS))
    except (JoseError, ValueError, TypeError) as exc:
        raise invalid_client("The client assertion signature is invalid.", basic=False) from exc
    claims = token.claims
    registry = JWTClaimsRegistry(
        leeway=30,
        iss={"essential": True, "value": str(agent_id)},
        sub={"essential": True, "value": str(agent_id)},
        exp={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise invalid_client(
            f"The client assertion is invalid: {exc.description or exc.error}", False
        ) from exc
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
    if not {issuer, token_endpoint} & set(audiences):
        raise invalid_client("The client assertion's aud must be the issuer or the token endpoint.", False)
    if int(claims["exp"]) - int(claims.get("iat", time.time())) > ASSERTION_MAX_LIFETIME:
        raise invalid_client(f"Client assertions may live at most {ASSERTION_MAX_LIFETIME} s.", False)
    # Single use across every replica: the first to count this jti wins; the key expires with the assertion.
    ttl = max(1.0, float(claims["exp"]) - time.time() + 60)
    first, _ = await oauth.counters.incr_within(f"assertion-jti:{agent_id}:{claims['jti']}", 1, 1, ttl)
    if not first:
        raise invalid_client("This client assertion was already used (jti replay).", False)
    matched = usable[0]
    kid = token.header.get("kid")
    for row in usable:
        if kid and (row.public_jwk or {}).get("kid") == kid:
            matched = row
    return Client(agent_id, tenant_id, "private_key_jwt", matched.id)


def _client_id_from(form: dict[str, str], assertion: str) -> uuid.UUID:
    """``client_id`` from the form, else the assertion's unverified ``iss``."""
    candidate = form.get("client_id")
    if not candidate:
        try:
            payload = assertion.split(".")[1]
            candidate = str(parse(base64.urlsafe_b64decode(payload + "==")).get("iss", ""))
        except (IndexError, ValueError, binascii.Error, AttributeError) as exc:
            raise invalid_client("The client assertion is malformed.", basic=False) from exc
    try:
        return uuid.UUID(candidate)
    except ValueError as exc:
        raise invalid_client("Unknown client.", basic=False) from exc


def _import_public(jwk: dict[str, Any]) -> ECKey | OKPKey:
    if jwk.get("kty") == "EC":
        return ECKey.import_key(jwk)
    return OKPKey.import_key(jwk)
