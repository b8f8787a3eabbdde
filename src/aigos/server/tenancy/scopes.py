"""What an API key may do. Every endpoint names the scope it needs; ``admin`` grants all of them."""

from __future__ import annotations

from aigos.server.principal import ADMIN_SCOPE

ADMIN = ADMIN_SCOPE

#: Every scope, with what it allows. New endpoints add theirs here.
SCOPES: dict[str, str] = {
    "tenant:read": "read the tenant",
    "tenant:write": "change the tenant's name and settings",
    "members:read": "list members",
    "members:write": "add, change and remove members",
    "api_keys:read": "list API keys",
    "api_keys:write": "create, rotate and revoke API keys",
    "usage:read": "read usage and export it",
    "agents:read": "read agents",
    "agents:write": "register, change and deregister agents",
    "policies:read": "read policies",
    "policies:write": "create, change and delete policies",
    "killswitch:trigger": "trigger the kill switch",
    "audit:read": "read and export the audit log",
    "aigrc:read": "read AIGRC asset cards and compliance status",
    "aigrc:write": "upload, import and sync AIGRC asset cards",
    ADMIN: "everything above",
}


#: What a signed-in member may do, by role: owners everything; admins everything but owner-level acts
#: (making owners, minting admin keys); members work with agents and policies; viewers only read.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "owner": frozenset({ADMIN}),
    "admin": frozenset(scope for scope in SCOPES if scope != ADMIN),
    "member": frozenset(
        {scope for scope in SCOPES if scope.endswith(":read")}
        | {"agents:write", "policies:write", "killswitch:trigger", "aigrc:write"}
    ),
    "viewer": frozenset(scope for scope in SCOPES if scope.endswith(":read")),
}


def unknown(scopes: list[str]) -> list[str]:
    """The scopes in ``scopes`` that do not exist."""
    return [scope for scope in scopes if scope not in SCOPES]
