"""What one server process holds for its lifetime: settings, the database, the bus and its buffers."""

from __future__ import annotations

from dataclasses import dataclass, field

from aigos.server.aigrc.sync import CardSync
from aigos.server.aigrc.webhook import Webhook
from aigos.server.audit.log import EventLog
from aigos.server.audit.retention import Maintenance
from aigos.server.bus import Bus, RateLimiter
from aigos.server.config import Settings
from aigos.server.db import Database
from aigos.server.identity.agent_auth import AgentAuthenticator
from aigos.server.identity.keys import SigningKeys
from aigos.server.identity.oauth import OAuthServer
from aigos.server.identity.state import IdentityState
from aigos.server.killswitch.hub import Hub
from aigos.server.policy.budgets import BudgetBook
from aigos.server.policy.state import PolicyState
from aigos.server.shutdown import Shutdown
from aigos.server.tenancy.passwords import Passwords
from aigos.server.tenancy.usage import UsageMeter
from aigos.server.touches import Touches


@dataclass
class Runtime:
    """The process-wide resources every request may use, opened in the lifespan and closed on shutdown."""

    settings: Settings
    database: Database
    bus: Bus
    usage: UsageMeter
    key_activity: Touches
    events: EventLog
    keys: SigningKeys
    identity: IdentityState
    agent_seen: Touches
    agent_auth_seen: Touches
    #: ``agent_credentials.last_used_at``: which secret or key authenticated at the token endpoint.
    credential_used: Touches
    #: Verifies agent tokens (the policy check's first step), with its cache of verified tokens.
    agent_auth: AgentAuthenticator
    #: What the OAuth 2.0 endpoints work with.
    oauth: OAuthServer
    killswitch: Hub
    policy: PolicyState
    budgets: BudgetBook
    #: Admits requests (API keys, tenants, sign-in and signup throttles): shared across replicas, and
    #: per process while the bus is down (``FallbackRateLimiter``).
    limiter: RateLimiter
    #: Set when the server is told to stop: streams end at once.
    shutdown: Shutdown = field(default_factory=Shutdown)
    maintenance: Maintenance | None = None
    #: Syncs asset cards from the AIGRC source, when one is configured.
    aigrc: CardSync | None = None
    #: Delivers the AIGRC tenant's runtime events to AIGRC, when a webhook is configured.
    aigrc_webhook: Webhook | None = None
    features: list[str] = field(default_factory=list)
    passwords: Passwords = field(default_factory=Passwords)

    def start(self) -> None:
        """Start the background flushers."""
        self.usage.start()
        self.key_activity.start()
        self.agent_seen.start()
        self.agent_auth_seen.start()
        self.credential_used.start()
        self.budgets.start()
        self.events.start()
        if self.maintenance is not None:
            self.maintenance.start()
        if self.aigrc is not None:
            self.aigrc.start()
        if self.aigrc_webhook is not None:
            self.aigrc_webhook.start()

    async def close(self) -> None:
        """Flush buffers into the database, then release the bus and the database pools."""
        if self.maintenance is not None:
            await self.maintenance.stop()
        if self.aigrc is not None:
            await self.aigrc.stop()
        if self.aigrc_webhook is not None:
            await self.aigrc_webhook.stop()
        await self.usage.stop()
        await self.key_activity.stop()
        await self.agent_seen.stop()
        await self.agent_auth_seen.stop()
        await self.credential_used.stop()
        await self.budgets.stop()
        await self.policy.stop()
        await self.killswitch.stop()
        await self.identity.stop()
        await self.events.stop()
        await self.bus.close()
        await self.database.dispose()
