"""Agent-plane authentication: one dependency that turns a bearer token into the calling agent.

The work is the ``AgentAuthenticator``'s, built once with the runtime and given to ``admit`` (the policy
check calls it directly) and to the dependencies ``AgentDep`` and ``agent_scope``.

Fast enough for the policy hot path: a token verified once is cached until it expires, and the checks that
must reflect changes at once (revoked ``jti``, agent status) are dictionary look-ups in the replica's
``IdentityState``, kept current through the bus. Only while the bus is down do they hit the database.
An exchanged token is checked along its whole delegation chain the same way: every agent in its ``act``
chain must still hold tokens, and no token it was exchanged from may be revoked.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from aigos.core import delegation
from aigos.core.agents import AgentStatus, may_hold_tokens
from aigos.core.canonical import parse
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.db.database import set_tenant
from aigos.server.errors import Forbidden, Unauthenticated
from aigos.server.identity import tokens
from aigos.server.identity.keys import SigningKeys
from aigos.server.identity.models import Agent, RevokedToken
from aigos.server.identity.state import IdentityState
from aigos.server.identity.tokens import VerifiedCache

agent_bearer = HTTPBearer(auto_error=False, description="An agent access token (RuntimeIdentity JWT).")


def issuer_for(request: Request, settings: Settings) -> str:
    """The issuer identifier: configured, or the URL this request came in on."""
    if settings.issuer:
        return settings.issuer.rstrip("/")
    return str(request.base_url).rstrip("/")


@dataclass(frozen=True, slots=True)
class AgentPrincipal:
    """The agent calling on the agent plane."""

    agent_id: uuid.UUID
    tenant_id: uuid.UUID
    status: AgentStatus
    claims: dict[str, Any]

    @property
    def actor_id(self) -> str:
        """How the audit trail names this caller."""
        return f"agent:{self.agent_id}"


def token_error(detail: str, code: str) -> Unauthenticated:
    """A 401 in the RFC 6750 form (``WWW-Authenticate: Bearer error="invalid_token"``)."""
    return Unauthenticated(detail, code=code, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class AgentAuthenticator:
    """Verifies agent tokens: built once per process from the signing keys, the identity state (revoked
    ``jti`` and agent statuses, kept current through the bus), the database (asked only while the bus is
    down) and the settings (the issuer), with its own cache of verified tokens."""

    __slots__ = ("cache", "database", "identity", "keys", "settings")

    def __init__(
        self,
        keys: SigningKeys,
        identity: IdentityState,
        database: Database,
        settings: Settings,
        cache: VerifiedCache | None = None,
    ) -> None:
        self.keys = keys
        self.identity = identity
        self.database = database
        self.settings = settings
        #: Tokens whose signature and claims were verified, until they expire.
        self.cache = cache if cache is not None else VerifiedCache()

    async def authenticate(self, token: str, issuer: str) -> AgentPrincipal:
        """The agent behind ``token`` or a 401 saying why not."""
        now = time.time()
        claims = self.cache.get(token, now)
        if claims is None or claims.get("iss") != issuer:
            claims = await self._verify(token, issuer)
            self.cache.put(token, claims)
        try:
            agent_id, tenant_id = uuid.UUID(str(claims["sub"])), uuid.UUID(str(claims["aud"]))
        except ValueError as exc:
            raise token_error("The token names no agent.", "INVALID_TOKEN") from exc
        jti = str(claims["jti"])
        chain = _chain_of(claims)
        state = self.identity
        known: AgentStatus | None
        if state.live:
            revoked, known = state.is_revoked(jti), state.status_of(agent_id)
            if not await state.belongs(agent_id, tenant_id):
                known = None
            ancestor_revoked = any(state.is_revoked(ancestor) for ancestor in chain.ancestor_jtis)
            actors: dict[uuid.UUID, AgentStatus | None] = {
                actor: state.status_of(actor) for actor in chain.actors
            }
        else:
            revoked, known, ancestor_revoked, actors = await _from_database(
                self.database, tenant_id, agent_id, jti, chain
            )
        if known is None:
            # Only a token signed with our key gets here: sub and aud must still name one of our agents.
            raise token_error("The token's agent is not in its audience.", "INVALID_TOKEN")
        status = known
        if revoked:
            raise token_error("The token was revoked.", "TOKEN_REVOKED")
        if ancestor_revoked:
            raise token_error("A token this one was exchanged from was revoked.", "TOKEN_REVOKED")
        if not may_hold_tokens(status):
            raise token_error(f"The agent is {status.value}.", f"AGENT_{status.value.upper()}")
        if actors:
            status = _delegated_status(status, actors)
        return AgentPrincipal(agent_id=agent_id, tenant_id=tenant_id, status=status, claims=claims)

    def terminated(self, token: str, refusal: Unauthenticated) -> AgentPrincipal | None:
        """The terminated agent behind ``token``, when ``refusal`` was for that alone; else None."""
        # The authenticator refuses on status only after the signature, issuer, revocation and tenant
        # checks passed and the verified claims were cached: those claims are then the terminated agent's.
        claims = self.cache.get(token, time.time())
        if refusal.instance_code != "AGENT_TERMINATED" or claims is None:
            return None
        return AgentPrincipal(
            agent_id=uuid.UUID(str(claims["sub"])),
            tenant_id=uuid.UUID(str(claims["aud"])),
            status=AgentStatus.TERMINATED,
            claims=claims,
        )

    async def _verify(self, token: str, issuer: str) -> dict[str, Any]:
        try:
            return tokens.verify(self.keys, token, issuer)
        except tokens.InvalidToken as first:
            # A key created on another replica since our last load: reload once, then decide.
            if not _names_unknown_key(self.keys, token):
                raise token_error(str(first), "INVALID_TOKEN") from first
            if not await self.keys.reload_if_stale():
                raise token_error(str(first), "INVALID_TOKEN") from first
            try:
                return tokens.verify(self.keys, token, issuer)
            except tokens.InvalidToken as exc:
                raise token_error(str(exc), "INVALID_TOKEN") from exc


def _names_unknown_key(keys: SigningKeys, token: str) -> bool:
    try:
        header = parse(base64.urlsafe_b64decode(token.split(".", 1)[0] + "=="))
    except (ValueError, IndexError):
        return False
    return isinstance(header, dict) and isinstance(header.get("kid"), str) and not keys.knows(header["kid"])


@dataclass(frozen=True, slots=True)
class _Delegation:
    """A token's delegation chain, with the actors as agent ids."""

    actors: tuple[uuid.UUID, ...] = ()
    ancestor_jtis: tuple[str, ...] = ()


_UNDELEGATED = _Delegation()


def _chain_of(claims: dict[str, Any]) -> _Delegation:
    if "act" not in claims and delegation.ANCESTORS_CLAIM not in claims:
        return _UNDELEGATED  # the common case, on the hot path
    try:
        chain = delegation.Chain.of(claims)
        return _Delegation(tuple(uuid.UUID(actor) for actor in chain.actors), chain.ancestor_jtis)
    except ValueError as exc:
        raise token_error(f"The token's delegation chain is invalid: {exc}", "INVALID_TOKEN") from exc


def _delegated_status(own: AgentStatus, actors: dict[uuid.UUID, AgentStatus | None]) -> AgentStatus:
    """The status a delegated token acts with: refused if any delegator may no longer hold tokens, paused
    while one is paused (so its checks answer ``PAUSED``, as the delegator's own would)."""
    paused = own is AgentStatus.PAUSED
    for actor, status in actors.items():
        if status is None:
            raise token_error("The token's delegation names an unknown agent.", "INVALID_TOKEN")
        if not may_hold_tokens(status):
            raise token_error(
                f"The agent {actor} that delegated this token is {status.value}.",
                f"DELEGATOR_{status.value.upper()}",
            )
        paused = paused or status is AgentStatus.PAUSED
    return AgentStatus.PAUSED if paused else own


async def _from_database(
    database: Database, tenant_id: uuid.UUID, agent_id: uuid.UUID, jti: str, chain: _Delegation
) -> tuple[bool, AgentStatus | None, bool, dict[uuid.UUID, AgentStatus | None]]:
    """What the identity state would say, read from the database: whether the token and any of its
    ancestors were revoked, the agent's status and its delegators'."""
    agent_ids = {agent_id, *chain.actors}
    jtis = {jti, *chain.ancestor_jtis}
    async with database.session() as session:
        await set_tenant(session, tenant_id)
        rows = await session.execute(
            select(Agent.id, Agent.status).where(Agent.id.in_(agent_ids), Agent.tenant_id == tenant_id)
        )
        statuses = {row.id: AgentStatus(row.status) for row in rows}
        revoked = set(await session.scalars(select(RevokedToken.jti).where(RevokedToken.jti.in_(jtis))))
    actors = {actor: statuses.get(actor) for actor in chain.actors}
    ancestor_revoked = any(ancestor in revoked for ancestor in chain.ancestor_jtis)
    return jti in revoked, statuses.get(agent_id), ancestor_revoked, actors


#: The claims an introspection answer repeats from the token (RFC 7662 section 2.2), then AIGOS's own.
_INTROSPECTED = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti")
_INTROSPECTED_AIGOS = ("aigos:capabilities", "aigos:golden_thread", "aigos:lineage", "act")


async def introspection(
    authenticator: AgentAuthenticator, tenant_id: uuid.UUID, token: str, issuer: str
) -> dict[str, Any]:
    """Whether ``token`` is active, and its claims, as RFC 7662 answers a caller of ``tenant_id``: a token
    of another tenant is as inactive as an invalid one."""
    try:
        agent = await authenticator.authenticate(token, issuer)
    except Unauthenticated:
        return {"active": False}
    if agent.tenant_id != tenant_id:
        return {"active": False}
    claims = agent.claims
    body: dict[str, Any] = {
        "active": True,
        **{key: claims[key] for key in _INTROSPECTED if key in claims},
        "token_type": "Bearer",
        "aigos:status": agent.status.value,
    }
    for key in _INTROSPECTED_AIGOS:
        if key in claims:
            body[key] = claims[key]
    return body


async def get_agent_authenticator(request: Request) -> AgentAuthenticator:
    """The process's agent authenticator, built with the runtime (``async``: see ``deps.get_runtime``)."""
    authenticator: AgentAuthenticator = request.app.state.runtime.agent_auth
    return authenticator


AgentAuthDep = Annotated[AgentAuthenticator, Depends(get_agent_authenticator)]


async def get_agent(
    request: Request,
    authenticator: AgentAuthDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(agent_bearer)],
) -> AgentPrincipal:
    """The calling agent; 401 without a valid, unrevoked token of a token-holding agent."""
    return await admit(request, authenticator, credentials.credentials if credentials else None)


async def admit(
    request: Request,
    authenticator: AgentAuthenticator,
    token: str | None,
    scope: str | None = None,
    *,
    terminated_too: bool = False,
) -> AgentPrincipal:
    """The agent behind ``token``, also holding ``scope`` if one is named (401 / 403 otherwise).

    The dependency-free form of ``AgentDep``, for the hot path: FastAPI's dependency resolution costs more
    than the policy decision itself. ``terminated_too`` admits a terminated agent's still valid token, for
    the few things it must still do: hear its TERMINATE, acknowledge it, report its last outcomes.
    """
    if not token:
        raise Unauthenticated(
            "Send `Authorization: Bearer <agent token>`.",
            code="UNAUTHENTICATED",
            headers={"WWW-Authenticate": 'Bearer realm="aigos"'},
        )
    try:
        principal = await authenticator.authenticate(token, issuer_for(request, authenticator.settings))
    except Unauthenticated as exc:
        terminated = authenticator.terminated(token, exc) if terminated_too else None
        if terminated is None:
            raise
        principal = terminated
    request.state.tenant_id = str(principal.tenant_id)
    if scope is not None:
        require_scope(principal, scope)
    return principal


def require_scope(principal: AgentPrincipal, scope: str) -> None:
    """403 ``INSUFFICIENT_SCOPE`` unless the agent's token holds ``scope``."""
    if scope not in str(principal.claims.get("scope", "")).split():
        raise Forbidden(f"The token lacks the `{scope}` scope.", code="INSUFFICIENT_SCOPE", scope=scope)


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


AgentDep = Annotated[AgentPrincipal, Depends(get_agent)]


def agent_scope(scope: str, *, terminated_too: bool = False) -> Callable[..., Awaitable[AgentPrincipal]]:
    """A dependency admitting agents whose token carries ``scope`` (403 ``INSUFFICIENT_SCOPE`` otherwise).

    Tokens get every agent scope unless asked for fewer (a token exchanged down to ``policies:check``, say).
    """

    async def check(
        request: Request,
        authenticator: AgentAuthDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(agent_bearer)],
    ) -> AgentPrincipal:
        token = credentials.credentials if credentials else None
        return await admit(request, authenticator, token, scope, terminated_too=terminated_too)

    check.__name__ = f"agent_scope_{scope.replace(':', '_')}"
    return check
