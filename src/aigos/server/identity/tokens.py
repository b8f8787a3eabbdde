"""The RuntimeIdentity token: a JWT access token (RFC 9068) with the seed's AIGOS claims.

Issued with the active signing key; verified against every published key with an algorithm allow-list,
``typ`` at+jwt, issuer, audience (the tenant) and expiry with a small leeway.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwt import JWTClaimsRegistry

from aigos.server.identity.keys import ALGORITHMS, SigningKeys

TOKEN_TYPE = "at+jwt"
ACCEPTED_TYPES = frozenset({TOKEN_TYPE, "application/" + TOKEN_TYPE})
AIGOS_VERSION = "1.0"
LEEWAY_SECONDS = 30
#: What an agent token may be used for; asked for nothing, an agent gets all of it.
AGENT_SCOPES = ("agent", "policies:check", "telemetry:write", "killswitch:listen")
DEFAULT_SCOPE = " ".join(AGENT_SCOPES)


class InvalidToken(Exception):
    """The token is not one we issued, or no longer valid; the message says why (never echoes the token)."""


@dataclass(frozen=True)
class Issued:
    """A freshly signed token and its claims."""

    token: str
    claims: dict[str, Any]

    @property
    def expires_in(self) -> int:
        """Seconds until expiry."""
        return int(self.claims["exp"]) - int(self.claims["iat"])


class ClaimsSource(Protocol):
    """What a token's claims are built from: an ``Agent`` row, or a cached snapshot of one."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...
    @property
    def capabilities(self) -> dict[str, Any]: ...
    @property
    def golden_thread(self) -> dict[str, Any] | None: ...
    @property
    def parent_id(self) -> uuid.UUID | None: ...
    @property
    def lineage_depth(self) -> int: ...


@dataclass(frozen=True)
class AgentSnapshot:
    """The claim-relevant fields of an agent, kept by the token endpoint's client cache."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    capabilities: dict[str, Any]
    golden_thread: dict[str, Any] | None
    parent_id: uuid.UUID | None
    lineage_depth: int

    @classmethod
    def of(cls, agent: ClaimsSource) -> AgentSnapshot:
        """A snapshot of ``agent``."""
        return cls(
            agent.id,
            agent.tenant_id,
            dict(agent.capabilities),
            agent.golden_thread,
            agent.parent_id,
            agent.lineage_depth,
        )


def claims_for(
    agent: ClaimsSource,
    issuer: str,
    ttl: int,
    scope: str = DEFAULT_SCOPE,
    delegation: dict[str, Any] | None = None,
    now: int | None = None,
    not_after: int | None = None,
) -> dict[str, Any]:
    """The claim set of an agent's token.

    ``delegation`` holds the claims of an exchanged token (``act`` and its ancestors, from
    ``core.delegation.delegated``); ``not_after`` caps ``exp``, so a child never outlives its parent's token.
    """
    issued_at = int(now if now is not None else time.time())
    expires = issued_at + ttl if not_after is None else min(issued_at + ttl, not_after)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": str(agent.id),
        "aud": str(agent.tenant_id),
        "exp": expires,
        "iat": issued_at,
        "nbf": issued_at,
        "jti": uuid.uuid4().hex,
        "client_id": str(agent.id),
        "scope": scope,
        "aigos:version": AIGOS_VERSION,
        "aigos:capabilities": {
            "tools": list(agent.capabilities.get("tools", [])),
            "domains": list(agent.capabilities.get("domains", [])),
            "max_budget": agent.capabilities.get("max_budget"),
        },
    }
    if agent.golden_thread:
        claims["aigos:golden_thread"] = {
            "hash": agent.golden_thread.get("hash"),
            "ticket_id": agent.golden_thread.get("ticket_id"),
            "verified": bool(agent.golden_thread.get("verified", False)),
        }
    if agent.parent_id is not None:
        claims["aigos:lineage"] = {"parent_id": str(agent.parent_id), "depth": agent.lineage_depth}
    if delegation:
        claims.update(delegation)
    return claims


def sign(keys: SigningKeys, claims: dict[str, Any]) -> Issued:
    """Sign ``claims`` with the active key: a compact JWS (RFC 7515), as ``joserfc.jwt.encode`` makes it.

    Built here rather than through joserfc, whose encoder re-validates the header and claims and looks
    the algorithm up on every call: about as much work again as the signature itself, on every token.
    """
    active = keys.active
    header = {"alg": active.alg, "kid": active.kid, "typ": TOKEN_TYPE}
    signing_input = _segment(json.dumps(header, separators=(",", ":")).encode("ascii"))
    signing_input += b"." + _segment(json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode())
    private = active.key.get_op_key("sign")
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        size = (private.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        signature = private.sign(signing_input)
    else:  # pragma: no cover - keys.generate and keys._import make no other kind
        raise TypeError(f"cannot sign with {type(private).__name__}")
    return Issued((signing_input + b"." + _segment(signature)).decode("ascii"), claims)


def _segment(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class VerifiedCache:
    """Tokens already verified, until they expire: a signature check costs ~100 µs, a lookup ~1 µs."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, token: str, now: float) -> dict[str, Any] | None:
        """The claims of a still-valid verified token."""
        claims = self._entries.get(token)
        if claims is None:
            return None
        if claims["exp"] + LEEWAY_SECONDS <= now:
            del self._entries[token]
            return None
        return claims

    def put(self, token: str, claims: dict[str, Any]) -> None:
        """Remember a verified token (evicting the oldest entry past the bound)."""
        self._entries[token] = claims
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def verify(keys: SigningKeys, token: str, issuer: str, now: float | None = None) -> dict[str, Any]:
    """The claims of a valid token; ``InvalidToken`` otherwise."""
    try:
        decoded = jwt.decode(token, keys.keyset, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidToken(f"token signature or format is invalid ({type(exc).__name__})") from exc
    # RFC 9068 section 4: "at+jwt" or "application/at+jwt"; media types compare case-insensitively.
    if str(decoded.header.get("typ", "")).lower() not in ACCEPTED_TYPES:
        raise InvalidToken("token type is not at+jwt")
    registry = JWTClaimsRegistry(
        now=int(now) if now is not None else None,
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": issuer},
        sub={"essential": True},
        aud={"essential": True},
        exp={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(decoded.claims)
    except JoseError as exc:
        raise InvalidToken(f"token claims are invalid: {exc.description or exc.error}") from exc
    return dict(decoded.claims)
