"""The authenticated caller of one request, as every context names it.

Tenancy resolves a bearer credential into a ``Principal`` (``tenancy/principal.py``), the event log names it
as an event's actor (``audit/events.py``), and the routes of every context receive it. It lives here, below
all of them, so that naming the caller makes no context import another.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

#: The scope that grants every other one.
ADMIN_SCOPE = "admin"
PrincipalKind = Literal["api_key", "platform", "session", "agent"]


def grants(held: frozenset[str], needed: str) -> bool:
    """Whether a holder of ``held`` may act with ``needed``."""
    return needed in held or ADMIN_SCOPE in held


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request.

    ``tenant_id`` is None only for the platform admin, who acts across tenants.
    ``actor_id`` names the caller in logs and the audit trail (``api_key:<id>``, ``platform:<name>``,
    ``user:<id>`` for a signed-in member, whose scopes are their role's).
    """

    kind: PrincipalKind
    actor_id: str
    tenant_id: uuid.UUID | None
    scopes: frozenset[str]
    api_key_id: uuid.UUID | None = None
    plan_tier: str | None = None
    rate_limit_rpm: int | None = None
    rate_limit_rph: int | None = None
    session_id: uuid.UUID | None = None

    @property
    def is_platform(self) -> bool:
        """Whether this is the platform admin."""
        return self.kind == "platform"

    def may(self, scope: str) -> bool:
        """Whether the caller holds ``scope`` (the platform admin holds every scope)."""
        return self.is_platform or grants(self.scopes, scope)
