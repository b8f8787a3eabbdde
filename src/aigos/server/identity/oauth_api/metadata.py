"""Authorization server metadata (RFC 8414), also at the OpenID discovery path, and the JWKS that
verifies agent tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from aigos.server.deps import SettingsDep
from aigos.server.identity import tokens
from aigos.server.identity.agent_auth import issuer_for
from aigos.server.identity.deps import SigningKeysDep
from aigos.server.identity.grants import GRANT_TYPES
from aigos.server.identity.keys import ALGORITHMS
from aigos.server.routing import OAuthRoute

router = APIRouter(tags=["oauth2"], route_class=OAuthRoute)

CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")


def metadata(issuer: str) -> dict[str, Any]:
    """The authorization server metadata (RFC 8414)."""
    return {
        "issuer": issuer,
        "token_endpoint": issuer + "/oauth2/token",
        "jwks_uri": issuer + "/.well-known/jwks.json",
        "introspection_endpoint": issuer + "/oauth2/introspect",
        "revocation_endpoint": issuer + "/oauth2/revoke",
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "introspection_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "scopes_supported": list(tokens.AGENT_SCOPES),
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(ALGORITHMS),
        "service_documentation": issuer + "/docs",
    }


@router.get("/.well-known/oauth-authorization-server", summary="OAuth 2.0 server metadata (RFC 8414)")
async def oauth_metadata(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """Where the endpoints are and what they support."""
    return metadata(issuer_for(request, settings))


@router.get("/.well-known/openid-configuration", summary="The same metadata where OpenID clients look")
async def openid_configuration(request: Request, settings: SettingsDep) -> dict[str, Any]:
    """The RFC 8414 document at the OpenID Connect discovery path (AGNTCY and many clients look here)."""
    return metadata(issuer_for(request, settings))


@router.get("/.well-known/jwks.json", summary="Token signing keys (JWKS)")
async def jwks(keys: SigningKeysDep) -> Response:
    """The public keys that verify agent tokens, including retired ones whose tokens may still be live."""
    return JSONResponse(keys.jwks(), headers={"Cache-Control": "public, max-age=300"})
