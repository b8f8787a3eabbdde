"""What the sync and async clients share: configuration, the agent's token, check bodies and answers,
the kill-switch state and the telemetry buffer. No I/O here: each client does its own."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aigos.sdk.config import ClientConfig
from aigos.sdk.control import AgentControl
from aigos.sdk.errors import (
    AgentTerminated,
    AigosError,
    AigosUnavailable,
    AuthenticationError,
    ConfigurationError,
)
from aigos.sdk.local import LocalPolicy
from aigos.sdk.models import Decision, Identity
from aigos.sdk.telemetry import TelemetryBuffer
from aigos.sdk.transport import HttpResponse, raise_for_problem

if TYPE_CHECKING:
    from aigos.core.assetcard import AssetCard

log = logging.getLogger("aigos.sdk")

DEFAULT_ACTION = "tool.call"
#: 401 codes after which a fresh token (from the client credentials) may succeed.
REFRESHABLE = frozenset({"INVALID_TOKEN", "TOKEN_REVOKED", "TOKEN_EXPIRED"})
#: 401 codes that mean the agent itself may no longer act.
GONE = frozenset({"AGENT_TERMINATED", "AGENT_SUSPENDED", "AGENT_ARCHIVED"})
#: Queued telemetry events one policy check carries to the server (the server takes up to 100).
CARRIED_PER_CHECK = 50


class ClientCore:
    """State and pure helpers of ``AigosClient`` and ``AsyncAigosClient``."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.control = AgentControl(on_pause=config.on_pause, pause_timeout=config.pause_timeout)
        self.telemetry = TelemetryBuffer(config.telemetry_batch)
        self.identity: Identity | None = None
        self.agent_id: str | None = config.client_id
        self._client_id = config.client_id
        self._client_secret = config.client_secret
        self._token: str | None = config.agent_token
        # A given token's lifetime is unknown: use it until the server refuses it.
        self._refresh_at = float("inf") if config.agent_token else 0.0
        self._token_lock = threading.Lock()
        self.local: LocalPolicy | None = None
        self.listening = False
        # Off for good once the server says the token may not write telemetry (an attenuated token).
        self.carry_telemetry = config.telemetry_enabled
        if config.agent_token and not self.agent_id:
            self.agent_id = _subject_of(config.agent_token)
        #: The asset card the agent registers against (``asset_card=``), parsed and validated here.
        self.asset_card: AssetCard | None = None
        self._card_text = b""
        if config.asset_card:
            self.asset_card, self._card_text = _read_card(config.asset_card)

    # -- identity and token ---------------------------------------------------------------------------

    @property
    def can_refresh(self) -> bool:
        """Whether client credentials are known, so a new token can be had at the token endpoint."""
        return bool(self._client_id and self._client_secret)

    def _token_is_fresh(self) -> bool:
        return self._token is not None and time.time() < self._refresh_at

    def _adopt_token(self, token: str, expires_in: float | None) -> None:
        self._token = token
        if expires_in is None:
            self._refresh_at = float("inf")
            return
        margin = self.config.refresh_margin
        # Refresh ``margin`` seconds before expiry; for tokens shorter-lived than that, at half-life.
        lead = margin if margin < expires_in else expires_in / 2
        self._refresh_at = time.time() + expires_in - lead

    def _adopt_identity(self, identity: Identity) -> None:
        self.identity = identity
        self.agent_id = identity.agent_id
        self._client_id = identity.client_id
        if identity.client_secret:
            self._client_secret = identity.client_secret
        expires_in = identity.expires_at.timestamp() - time.time() if identity.expires_at else None
        self._adopt_token(identity.identity_token, expires_in)

    def _token_form(self) -> dict[str, str]:
        if not self.can_refresh:
            raise ConfigurationError(
                "no agent identity: call register(), or set client_id/client_secret (AIGOS_CLIENT_ID/SECRET)"
            )
        return {
            "grant_type": "client_credentials",
            "client_id": str(self._client_id),
            "client_secret": str(self._client_secret),
        }

    def _take_token_response(self, response: HttpResponse) -> str:
        raise_for_problem(response)
        body = response.json()
        token = str(body["access_token"])
        expires_in = body.get("expires_in")
        self._adopt_token(token, float(expires_in) if expires_in is not None else None)
        return token

    def _admin_headers(self) -> dict[str, str]:
        if not self.config.api_key:
            raise ConfigurationError("registering needs an admin API key (api_key= or AIGOS_API_KEY)")
        return {"Authorization": f"Bearer {self.config.api_key}"}

    def _registration(
        self, name: str, capabilities: dict[str, Any] | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, **fields}
        if capabilities is not None:
            body["capabilities"] = _capabilities(capabilities)
        card = self.asset_card
        if card is not None and "asset_card_id" not in body:
            body["asset_card_id"] = card.id
            _within_card(card, body.get("capabilities"))
        if self.config.asset_card_id and "asset_card_id" not in body:
            body["asset_card_id"] = self.config.asset_card_id
        return body

    def _card_upload(self) -> tuple[str, dict[str, str], bytes] | None:
        """The request that uploads the card before a registration (path, headers, body), if there is one."""
        if self.asset_card is None:
            return None
        headers = {**self._admin_headers(), "Content-Type": "application/yaml"}
        return "/v1/aigrc/asset-cards", headers, self._card_text

    # -- checks ---------------------------------------------------------------------------------------

    @staticmethod
    def _check_body(
        action: str,
        resource: str | None,
        tool: str | None,
        domain: str | None,
        estimated_cost: float | None,
        context: dict[str, Any] | None,
        trace: bool,
    ) -> dict[str, Any]:
        ctx: dict[str, Any] = dict(context or {})
        if tool is not None:
            ctx["tool"] = tool
        if domain is not None:
            ctx["domain"] = domain
        if estimated_cost is not None:
            ctx["estimated_cost"] = estimated_cost
        body: dict[str, Any] = {"action": action, "resource": resource or tool or action, "context": ctx}
        if trace:
            body["trace"] = True
        return body

    def _carry(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Move queued telemetry (the previous calls' outcomes) into a check's body: one request instead of
        a check plus a telemetry post per guarded call. The flusher sends only what no check took."""
        if not self.carry_telemetry or self.telemetry.carry_held or not len(self.telemetry):
            return []
        carried = self.telemetry.take(CARRIED_PER_CHECK)
        if carried:
            body["telemetry"] = carried
        return carried

    def _carry_failed(self, body: dict[str, Any], carried: list[dict[str, Any]], exc: Exception) -> bool:
        """Requeue what a failed check carried; True if the check should be sent again without it."""
        if not carried:
            return False
        self.telemetry.put_back(carried)
        del body["telemetry"]
        if isinstance(exc, AigosError) and exc.code == "INSUFFICIENT_SCOPE":
            self.carry_telemetry = False
            return True
        if isinstance(exc, AigosError) and exc.status == 400 and _about_telemetry(exc.problem):
            # A carried event the server refuses (a clock far ahead, say) must not refuse every later
            # check: the flusher sends it instead, and POST /v1/telemetry refuses a bad event alone.
            self.telemetry.carry_held = True
            return True
        return False

    def _local_decision(
        self, action: str, resource: str | None, tool: str | None, domain: str | None, cost: float | None
    ) -> Decision | None:
        """A decision from the cached signed bundle, or ``None`` when the server must decide."""
        local = self.local
        if local is None or cost:
            return None
        return local.decide(action, resource or tool or action, tool, domain, self.control.state)

    def _decision_from(self, response: HttpResponse) -> Decision:
        if response.status == 401:
            problem = _problem(response)
            if problem.get("code") in GONE:
                self._agent_gone(str(problem.get("code")), str(problem.get("detail") or ""))
        raise_for_problem(response)
        return Decision.from_json(response.json())

    def _agent_gone(self, code: str, detail: str) -> None:
        """The server says the agent may not act any more: refuse every guarded call from now on."""
        self.control.apply("TERMINATE", detail or code)
        raise AgentTerminated(detail or "the agent was terminated", code=code, status=401)

    def _unreachable(self, exc: AigosUnavailable, what: str) -> Decision:
        """Fail closed (raise) by default; fail open (allow, flagged) only if configured; logged."""
        if self.config.fail_open:
            log.warning("aigos server unreachable during %s; failing OPEN as configured: %s", what, exc)
            return Decision(allowed=True, code="FAIL_OPEN", reason=str(exc), fail_open=True)
        log.error("aigos server unreachable during %s; failing closed: %s", what, exc)
        raise exc

    @staticmethod
    def _refreshable(error: AigosError) -> bool:
        return isinstance(error, AuthenticationError) and error.code in REFRESHABLE


def _problem(response: HttpResponse) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _read_card(path: str) -> tuple[AssetCard, bytes]:
    """The card file at ``path``, parsed and held to the AIGRC schema (``ConfigurationError`` naming each
    field in error), and its bytes as they will be uploaded."""
    from aigos.core import assetcard

    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the asset card {path}: {exc.strerror or exc}") from exc
    try:
        return assetcard.parse(text, filename=Path(path).name), text
    except assetcard.CardInvalid as invalid:
        problems = "; ".join(f"{e.pointer or '/'}: {e.detail}" for e in invalid.errors)
        raise ConfigurationError(f"the asset card {path} is invalid: {problems}") from None


def _within_card(card: AssetCard, capabilities: dict[str, Any] | None) -> None:
    """Refuse here what the server would refuse: a card that may not run, capabilities beyond it."""
    if card.status in ("revoked", "deprecated"):
        raise AigosError(f"asset card {card.id} is {card.status}", code="ASSET_CARD_NOT_ACTIVE")
    if card.risk_level == "unacceptable":
        raise AigosError(f"asset card {card.id} is of unacceptable risk", code="ASSET_CARD_PROHIBITED")
    if card.capabilities is None or capabilities is None:
        return
    from aigos.core.delegation import capabilities_of

    asked = capabilities_of(capabilities)
    if asked.max_budget is None:
        asked = replace(asked, max_budget=card.capabilities.max_budget)  # the server gives the card's
    excess = card.capabilities.covers(asked)
    if excess:
        raise AigosError(
            f"the agent would exceed asset card {card.id}: {'; '.join(excess)}", code="EXCEEDS_ASSET_CARD"
        )


def _capabilities(capabilities: dict[str, Any]) -> dict[str, Any]:
    """Accept the seed's camelCase (``maxBudget``) as well as the API's snake_case."""
    out = dict(capabilities)
    if "maxBudget" in out:
        out["max_budget"] = out.pop("maxBudget")
    return out


def _subject_of(token: str) -> str | None:
    """The ``sub`` claim of a JWT, unverified: only to name the agent in requests (the server verifies)."""
    import base64

    import orjson

    try:
        part = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return str(claims["sub"])
    except (IndexError, KeyError, ValueError, TypeError):
        return None


def _about_telemetry(problem: dict[str, Any]) -> bool:
    """Whether a refused check's problem names only the telemetry it carried."""
    errors = problem.get("errors")
    return (
        isinstance(errors, list)
        and bool(errors)
        and all(isinstance(e, dict) and str(e.get("pointer", "")).startswith("/telemetry") for e in errors)
    )
