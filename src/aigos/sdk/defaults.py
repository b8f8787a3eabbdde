"""The module-level default client that ``@guard`` uses when none is passed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aigos.sdk.errors import ConfigurationError

if TYPE_CHECKING:
    from aigos.sdk.aclient import AsyncAigosClient
    from aigos.sdk.client import AigosClient

_default: AigosClient | AsyncAigosClient | None = None


def set_default_client(client: AigosClient | AsyncAigosClient | None) -> None:
    """Make ``client`` the one ``@guard`` uses by default."""
    global _default
    _default = client


def forget(client: Any) -> None:
    """Drop ``client`` as the default (it was closed)."""
    global _default
    if _default is client:
        _default = None


def default_client() -> AigosClient | AsyncAigosClient:
    """The default client; ``ConfigurationError`` when none was created or configured."""
    if _default is None:
        raise ConfigurationError("no AIGOS client: create AigosClient(...) or call aigos.sdk.configure(...)")
    return _default


def configure(**options: Any) -> AigosClient:
    """Create the default ``AigosClient`` from ``options`` and ``AIGOS_*`` variables."""
    from aigos.sdk.client import AigosClient

    return AigosClient(**options)
