"""High-entropy bearer secrets (API keys, client secrets, admin tokens): minting, hashing, comparing.

Secrets carry 256 bits of randomness, so a keyed hash (HMAC-SHA256 with a server-side pepper) is enough to
store them: a slow password KDF would only add latency to every authenticated call.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_BYTES = 32
#: Random characters kept in clear after the kind prefix, to recognise a secret in lists and logs.
DISPLAY_RANDOM_CHARS = 8


def mint(prefix: str) -> str:
    """A new secret such as ``aigos_sk_live_<43 url-safe chars>``."""
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def digest(secret: str, pepper: bytes) -> str:
    """The stored form of ``secret``: hex HMAC-SHA256 keyed with the server's pepper."""
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def matches(secret: str, stored_digest: str, pepper: bytes) -> bool:
    """Whether ``secret`` hashes to ``stored_digest``, compared in constant time."""
    return hmac.compare_digest(digest(secret, pepper), stored_digest)


def display_prefix(secret: str, prefix: str) -> str:
    """The part of a secret safe to show: its kind prefix and a few random characters."""
    return secret[: len(prefix) + DISPLAY_RANDOM_CHARS]
