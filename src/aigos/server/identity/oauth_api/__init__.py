"""The OAuth 2.0 endpoints for agents, one module per RFC (the logic is in the identity services):

- ``token``: the token endpoint (RFC 6749) and its grants, client credentials with secrets or
  ``private_key_jwt`` assertions (RFC 7523) and token exchange (RFC 8693);
- ``introspection``: token introspection (RFC 7662);
- ``revocation``: token revocation (RFC 7009);
- ``metadata``: authorization server metadata (RFC 8414) and the JWKS.

Errors are raised as ``OAuthError``; the app's one handler answers them in the RFC 6749 form.
"""

from __future__ import annotations

from fastapi import APIRouter

from aigos.server.identity.oauth_api import introspection, metadata, revocation, token

router = APIRouter()
# The endpoints' routes as built (``include_router`` would wrap them, re-analysed once per application).
for _module in (token, introspection, revocation, metadata):
    router.routes.extend(_module.router.routes)
