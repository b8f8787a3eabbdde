"""The OAuth 2.0 endpoints for agents: token (client credentials, token exchange), introspection,
revocation, discovery and the JWKS.

These answer errors in the RFC 6749 form, not as problem documents, because OAuth clients parse them.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core import delegation
from aigos.core.agents import may_hold_tokens
from aigos.server.audit.events import NewEvent, current_request_id
from aigos.server.db.database import set_tenant
from aigos.server.deps import RuntimeDep, SessionDep
from aigos.server.errors import Unauthenticated
from aigos.server.identity import tokens
from aigos.server.identity.agent_auth import authenticator, issuer_for
from aigos.server.identity.keys import ALGORITHMS
from aigos.server.identity.models import Agent, RevokedToken
from aigos.server.identity.oauth import Client, OAuthError, authenticate_client, invalid_client
from aigos.server.identity.state import CachedClient
from aigos.server.openapi import oauth_errors
from aigos.server.routing import OAuthRoute
from aigos.server.runtime import Runtime
from aigos.server.throttle import Throttle, Throttled, source_address

router = APIRouter(tags=["oauth2"], route_class=OAuthRoute)

CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM = "application/x-www-form-urlencoded"

_form_body = {
    "requestBody": {
        "required": True,
        "content": {FORM: {"schema": {"type": "object", "additionalProperties": {"type": "string"}}}},
    },
    "responses": oauth_errors(400, 401, 429),
}


def _oauth_error(error: OAuthError) -> JSONResponse:
    return JSONResponse(
        {"error": error.error, "error_description": error.description},
        status_code=error.status,
        headers={**NO_STORE, **error.headers},
    )


async def _form(request: Request) -> dict[str, str]:
    """The form body; RFC 6749 allows nothing else, and each parameter at most once."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
        raise OAuthError("invalid_request", f"The body must be {FORM}.")
    try:
        form = await request.form()
    except Exception as exc:
        raise OAuthError("invalid_request", "The form body could not be parsed.") from exc
    values: dict[str, str] = {}
    for key, value in form.multi_items():
        if key in values:
            raise OAuthError("invalid_request", f"Parameter {key!r} is repeated.")
        if not isinstance(value, str):
            raise OAuthError("invalid_request", f"Parameter {key!r} must be text.")
        values[key] = value
    return values


def _endpoint(request: Request, runtime: Runtime, path: str) -> str:
    return issuer_for(request, runtime.settings) + path


def _scope(requested: str | None) -> str:
    if not requested:
        return tokens.DEFAULT_SCOPE
    wanted = requested.split()
    unknown = [scope for scope in wanted if scope not in tokens.AGENT_SCOPES]
    if unknown:
        raise OAuthError("invalid_scope", f"Unknown scope: {' '.join(unknown)}.")
    return " ".join(dict.fromkeys(wanted))


def _record(
    runtime: Runtime, tenant_id: uuid.UUID, event_type: str, agent_id: uuid.UUID, **data: Any
) -> None:
    # Buffered: token traffic is high-volume; the event must never slow issuance down.
    outcome = "failure" if event_type.endswith("failed") else "success"
    runtime.events.enqueue(
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


async def _claims_source(runtime: Runtime, session: AsyncSession, client: Client) -> tokens.ClaimsSource:
    """The agent a token is issued for: from the client cache when possible, else the database (and then
    cached). The agent's status is checked either way, against the replica's live identity state."""
    basic = client.method == "client_secret_basic"
    if client.agent is not None:
        status = runtime.identity.status_of(client.agent_id)
        if not may_hold_tokens(status):
            raise invalid_client(f"The agent is {status.value}.", basic)
        return client.agent
    agent = await _load_agent(session, client)
    if client.secret_digest is not None:
        snapshot = tokens.AgentSnapshot.of(agent)
        runtime.identity.remember_client(
            client.secret_digest, CachedClient(client.credential_id, client.secret_expires_at, snapshot)
        )
    return agent


async def _load_agent(session: AsyncSession, client: Client) -> Agent:
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


@router.post(
    "/oauth2/token",
    summary="Token endpoint",
    openapi_extra=_form_body,
    responses={
        200: {"description": "An access token"},
        400: {"description": "RFC 6749 error"},
        429: {"description": "Too many failed client authentications (RFC 6749 error, `Retry-After`)"},
    },
)
async def token(request: Request, runtime: RuntimeDep, session: SessionDep) -> Response:
    """Issue an agent access token.

    `grant_type=client_credentials` with `client_secret_basic`, `client_secret_post` or `private_key_jwt`;
    or `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` with the parent's token as
    `subject_token` and the child agent's id as `requested_agent` (RFC 8693), for a child token whose
    capabilities are within the parent's.
    """
    try:
        form = await _form(request)
        grant = form.get("grant_type")
        if grant == CLIENT_CREDENTIALS:
            issued, agent = await _client_credentials(request, runtime, session, form)
        elif grant == TOKEN_EXCHANGE:
            issued, agent = await _token_exchange(request, runtime, session, form)
        elif not grant:
            raise OAuthError("invalid_request", "grant_type is required.")
        else:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported.")
    except OAuthError as error:
        return _oauth_error(error)
    runtime.agent_auth_seen.touch(agent.tenant_id, agent.id)
    body: dict[str, Any] = {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.claims["scope"],
    }
    if grant == TOKEN_EXCHANGE:
        body["issued_token_type"] = ACCESS_TOKEN_TYPE
    return JSONResponse(body, headers=NO_STORE)


async def _client_credentials(
    request: Request, runtime: Runtime, session: AsyncSession, form: dict[str, str]
) -> tuple[tokens.Issued, tokens.ClaimsSource]:
    issuer = issuer_for(request, runtime.settings)
    try:
        client = await _authenticate(request, runtime, session, form)
    except OAuthError as error:
        await _record_failure(runtime, session, form, request, error)
        raise
    runtime.credential_used.touch(client.tenant_id, client.credential_id)
    agent = await _claims_source(runtime, session, client)
    issued = tokens.sign(
        runtime.keys,
        tokens.claims_for(agent, issuer, runtime.settings.token_ttl_seconds, _scope(form.get("scope"))),
    )
    _record(
        runtime,
        client.tenant_id,
        "agent.token_issued",
        client.agent_id,
        method=client.method,
        credential_id=str(client.credential_id),
        jti=issued.claims["jti"],
    )
    return issued, agent


def _claimed_client_id(request: Request, form: dict[str, str]) -> str | None:
    """The client id the caller claims (Basic user name, form ``client_id``, or an assertion's unverified
    ``iss``), before any check."""
    from aigos.server.identity.oauth import _basic, _client_id_from

    try:
        basic = _basic(request.headers.get("authorization"))
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


async def _authenticate(
    request: Request, runtime: Runtime, session: AsyncSession, form: dict[str, str]
) -> Client:
    """``authenticate_client``, throttled: past too many failures per client id or per source address the
    caller gets 429 before its credential is even looked at, so guessing a secret gains nothing."""
    issuer = issuer_for(request, runtime.settings)
    throttle = Throttle(runtime.limiter, runtime.settings)
    buckets = throttle.sign_in("oauth", _claimed_client_id(request, form) or "", source_address(request))
    what = "failed client authentications"
    try:
        await throttle.check(buckets, what)
    except Throttled as exc:
        raise OAuthError("temporarily_unavailable", str(exc), 429, exc.headers) from exc
    try:
        return await authenticate_client(
            runtime, session, form, request.headers.get("authorization"), issuer + "/oauth2/token", issuer
        )
    except OAuthError as error:
        if error.error == "invalid_client":
            await throttle.record(buckets)
        raise


async def _record_failure(
    runtime: Runtime, session: AsyncSession, form: dict[str, str], request: Request, error: OAuthError
) -> None:
    """Failed authentications of a known agent go on its tenant's record."""
    from aigos.server.identity import credentials

    if error.status == 429:
        return  # refused before any check: nothing was attempted against the agent
    client_id = _claimed_client_id(request, form)
    try:
        agent_id = uuid.UUID(str(client_id))
    except ValueError:
        return
    tenant_id = await credentials.tenant_of_agent(session, agent_id)
    if tenant_id is not None:
        _record(
            runtime,
            tenant_id,
            "agent.authentication_failed",
            agent_id,
            error=error.error,
            reason=error.description,
        )


async def _token_exchange(
    request: Request, runtime: Runtime, session: AsyncSession, form: dict[str, str]
) -> tuple[tokens.Issued, tokens.ClaimsSource]:
    issuer = issuer_for(request, runtime.settings)
    if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
        raise OAuthError("invalid_request", f"subject_token_type must be {ACCESS_TOKEN_TYPE}.")
    if form.get("requested_token_type") not in (None, ACCESS_TOKEN_TYPE):
        raise OAuthError("invalid_request", "Only access tokens can be requested.")
    try:
        parent = await authenticator.authenticate(runtime, form.get("subject_token", ""), issuer)
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
    if child.lineage_depth > runtime.settings.max_lineage_depth:
        raise OAuthError("invalid_target", "DEPTH_EXCEEDED: the lineage is deeper than allowed.")
    problems = delegation.escalations(parent.claims.get("aigos:capabilities", {}), child.capabilities)
    if problems:
        raise OAuthError(
            "invalid_target", "PRIVILEGE_ESCALATION: child exceeds parent: " + "; ".join(problems)
        )
    parent_scopes = set(str(parent.claims.get("scope", "")).split())
    scope = _scope(form.get("scope") or " ".join(s for s in tokens.AGENT_SCOPES if s in parent_scopes))
    if not set(scope.split()) <= parent_scopes:
        raise OAuthError("invalid_scope", "A child token cannot have scopes its parent lacks.")
    # The child token acts for the parent's, so it ends when that one does (revoked, or expired).
    not_after = int(parent.claims["exp"])
    if not_after <= time.time():
        raise OAuthError("invalid_grant", "subject_token: the token has expired.")
    claims = tokens.claims_for(
        child,
        issuer,
        runtime.settings.token_ttl_seconds,
        scope,
        delegation=delegation.delegated(parent.claims, str(parent.agent_id)),
        not_after=not_after,
    )
    issued = tokens.sign(runtime.keys, claims)
    _record(
        runtime,
        parent.tenant_id,
        "agent.token_exchanged",
        child.id,
        parent_id=str(parent.agent_id),
        jti=issued.claims["jti"],
    )
    return issued, child


async def _caller(request: Request, runtime: Runtime, session: AsyncSession, form: dict[str, str]) -> Client:
    client = await _authenticate(request, runtime, session, form)
    # A suspended or terminated agent keeps its secret but may no longer use the OAuth endpoints.
    await _load_agent(session, client)
    return client


@router.post("/oauth2/introspect", summary="Token introspection (RFC 7662)", openapi_extra=_form_body)
async def introspect(request: Request, runtime: RuntimeDep, session: SessionDep) -> Response:
    """Whether a token is active, and its claims. The caller authenticates as a client of the same tenant."""
    try:
        form = await _form(request)
        caller = await _caller(request, runtime, session, form)
        if "token" not in form:
            raise OAuthError("invalid_request", "token is required.")
    except OAuthError as error:
        return _oauth_error(error)
    issuer = issuer_for(request, runtime.settings)
    try:
        agent = await authenticator.authenticate(runtime, form["token"], issuer)
    except Unauthenticated:
        return JSONResponse({"active": False}, headers=NO_STORE)
    if agent.tenant_id != caller.tenant_id:
        return JSONResponse({"active": False}, headers=NO_STORE)
    claims = agent.claims
    body: dict[str, Any] = {
        "active": True,
        **{
            key: claims[key]
            for key in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti")
            if key in claims
        },
        "token_type": "Bearer",
        "aigos:status": agent.status.value,
    }
    for key in ("aigos:capabilities", "aigos:golden_thread", "aigos:lineage", "act"):
        if key in claims:
            body[key] = claims[key]
    return JSONResponse(body, headers=NO_STORE)


@router.post("/oauth2/revoke", summary="Token revocation (RFC 7009)", openapi_extra=_form_body)
async def revoke(request: Request, runtime: RuntimeDep, session: SessionDep) -> Response:
    """Revoke an access token of the caller's tenant. Unknown or foreign tokens also answer 200 (RFC 7009)."""
    try:
        form = await _form(request)
        caller = await _caller(request, runtime, session, form)
        if "token" not in form:
            raise OAuthError("invalid_request", "token is required.")
    except OAuthError as error:
        return _oauth_error(error)
    if form.get("token_type_hint") not in (None, "access_token", "refresh_token"):
        return _oauth_error(OAuthError("unsupported_token_type", "Only access tokens exist here."))
    try:
        claims = tokens.verify(runtime.keys, form["token"], issuer_for(request, runtime.settings))
    except tokens.InvalidToken:
        return Response(status_code=200, headers=NO_STORE)
    if str(claims.get("aud")) != str(caller.tenant_id):
        return Response(status_code=200, headers=NO_STORE)
    # RFC 7009 2.1: a client revokes tokens issued to itself; a parent also those it obtained for a child.
    issued_to = {str(claims.get("client_id")), str((claims.get("act") or {}).get("sub"))}
    if str(caller.agent_id) not in issued_to:
        return _oauth_error(OAuthError("unauthorized_client", "The token was not issued to this client."))
    await revoke_jti(
        runtime,
        session,
        caller.tenant_id,
        uuid.UUID(str(claims["sub"])),
        str(claims["jti"]),
        float(claims["exp"]),
    )
    await runtime.events.record(
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
    await runtime.identity.announce_revoked(str(claims["jti"]), float(claims["exp"]))
    return Response(status_code=200, headers=NO_STORE)


async def revoke_jti(
    runtime: Runtime, session: AsyncSession, tenant_id: uuid.UUID, agent_id: uuid.UUID, jti: str, exp: float
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


def metadata(issuer: str) -> dict[str, Any]:
    """The authorization server metadata (RFC 8414)."""
    return {
        "issuer": issuer,
        "token_endpoint": issuer + "/oauth2/token",
        "jwks_uri": issuer + "/.well-known/jwks.json",
        "introspection_endpoint": issuer + "/oauth2/introspect",
        "revocation_endpoint": issuer + "/oauth2/revoke",
        "grant_types_supported": [CLIENT_CREDENTIALS, TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "scopes_supported": list(tokens.AGENT_SCOPES),
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(ALGORITHMS),
        "service_documentation": issuer + "/docs",
    }


@router.get("/.well-known/oauth-authorization-server", summary="OAuth 2.0 server metadata (RFC 8414)")
async def oauth_metadata(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Where the endpoints are and what they support."""
    return metadata(issuer_for(request, runtime.settings))


@router.get("/.well-known/openid-configuration", summary="The same metadata where OpenID clients look")
async def openid_configuration(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """The RFC 8414 document at the OpenID Connect discovery path (AGNTCY and many clients look here)."""
    return metadata(issuer_for(request, runtime.settings))


@router.get("/.well-known/jwks.json", summary="Token signing keys (JWKS)")
async def jwks(runtime: RuntimeDep) -> Response:
    """The public keys that verify agent tokens, including retired ones whose tokens may still be live."""
    return JSONResponse(runtime.keys.jwks(), headers={"Cache-Control": "public, max-age=300"})
