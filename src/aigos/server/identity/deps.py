"""FastAPI dependencies for what the identity context owns: its routes name exactly what they use.

Each reads one object the app built with the runtime. ``async`` for the reason given in
``aigos.server.deps.get_runtime``. The agent authenticator's own dependency is ``agent_auth.AgentAuthDep``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from aigos.server.identity.keys import SigningKeys
from aigos.server.identity.oauth import OAuthServer
from aigos.server.identity.state import IdentityState
from aigos.server.touches import Touches


async def get_signing_keys(request: Request) -> SigningKeys:
    """The token-signing keys."""
    keys: SigningKeys = request.app.state.runtime.keys
    return keys


async def get_identity_state(request: Request) -> IdentityState:
    """The replica's agent restrictions, revocations and client cache, and their announcements."""
    identity: IdentityState = request.app.state.runtime.identity
    return identity


async def get_oauth_server(request: Request) -> OAuthServer:
    """What the OAuth 2.0 endpoints work with."""
    oauth: OAuthServer = request.app.state.runtime.oauth
    return oauth


async def get_agent_seen(request: Request) -> Touches:
    """Agents' heartbeats not yet written (``agents.last_seen_at``)."""
    seen: Touches = request.app.state.runtime.agent_seen
    return seen


async def get_credential_used(request: Request) -> Touches:
    """Credentials' uses not yet written (``agent_credentials.last_used_at``)."""
    used: Touches = request.app.state.runtime.credential_used
    return used


SigningKeysDep = Annotated[SigningKeys, Depends(get_signing_keys)]
IdentityStateDep = Annotated[IdentityState, Depends(get_identity_state)]
OAuthServerDep = Annotated[OAuthServer, Depends(get_oauth_server)]
AgentSeenDep = Annotated[Touches, Depends(get_agent_seen)]
CredentialUsedDep = Annotated[Touches, Depends(get_credential_used)]
