"""Client configuration from arguments, falling back to ``AIGOS_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from aigos.sdk.errors import ConfigurationError

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
OnTerminate = Literal["exit", "raise"]
OnPause = Literal["wait", "raise"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything an ``AigosClient`` needs; each field has an ``AIGOS_<FIELD>`` environment variable.

    - ``api_key``: a tenant admin key, needed only to ``register`` agents.
    - ``client_id`` / ``client_secret``: an agent's credentials, exchanged at ``/oauth2/token`` for tokens.
    - ``agent_token``: a ready access token (no refresh possible without the credentials).
    - ``asset_card``: the path of the AIGRC asset card (YAML or JSON) the agent registers against: read at
      once, uploaded at ``register`` (unchanged cards are left alone), its id sent as ``asset_card_id``;
      a registration the card would not allow is refused here, before any request.
    - ``fail_open``: when the server cannot be reached, let guarded calls run (logged) instead of refusing.
    - ``on_terminate``: ``exit`` (SIGTERM to this process after flushing) or ``raise`` (only refuse calls).
    - ``on_pause``: guarded calls ``wait`` for RESUME, or ``raise`` ``AgentPaused``.
    - ``local_evaluation``: decide from the signed policy bundle in-process (budgeted calls still go remote).
    """

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    agent_token: str | None = None
    asset_card_id: str | None = None
    asset_card: str | None = None
    fail_open: bool = False
    timeout: float = 5.0
    max_retries: int = 3
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    heartbeat_interval: float = 30.0
    telemetry_interval: float = 5.0
    telemetry_batch: int = 50
    telemetry_enabled: bool = True
    refresh_margin: float = 30.0
    on_terminate: OnTerminate = "exit"
    on_pause: OnPause = "wait"
    pause_timeout: float | None = None
    local_evaluation: bool = False
    bundle_refresh: float = 5.0

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None, **given: Any) -> ClientConfig:
        """Arguments that are not ``None`` win; otherwise ``AIGOS_<NAME>``; otherwise the default."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if given.get(spec.name) is not None:
                values[spec.name] = given.pop(spec.name)
                continue
            given.pop(spec.name, None)
            raw = env.get(f"AIGOS_{spec.name.upper()}")
            if raw is not None:
                values[spec.name] = _parse(spec.name, str(spec.type), raw)
        if given:
            raise ConfigurationError(f"unknown option(s): {', '.join(sorted(given))}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse values that cannot work, naming the option."""
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.on_terminate not in ("exit", "raise"):
            raise ConfigurationError("on_terminate must be 'exit' or 'raise'")
        if self.on_pause not in ("wait", "raise"):
            raise ConfigurationError("on_pause must be 'wait' or 'raise'")
        if self.timeout <= 0 or self.max_retries < 0:
            raise ConfigurationError("timeout must be > 0 and max_retries >= 0")
        if bool(self.client_id) != bool(self.client_secret):
            raise ConfigurationError("client_id and client_secret go together")


def _parse(name: str, kind: str, raw: str) -> Any:
    raw = raw.strip()
    try:
        if kind == "bool":
            lowered = raw.lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError(raw)
            return lowered in _TRUE
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "float | None":
            return float(raw) if raw else None
    except ValueError as exc:
        raise ConfigurationError(f"AIGOS_{name.upper()}={raw!r} is not a valid {kind}") from exc
    return raw or None if kind.endswith("| None") else raw
