"""Local policy evaluation from the signed bundle (``GET /v1/policies/bundle``), for callers that need
microseconds: the bundle's Ed25519 signature is verified against ``/v1/policies/keys`` before it is used,
revalidated with its ETag, and decided by the same pure evaluator the server runs (``aigos.core.policy``).

Budgets stay on the server: a call with a cost goes to ``/v1/policies/check``, which reserves atomically.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aigos.core import globs, signing
from aigos.core.policy import Bundle, Request
from aigos.sdk.errors import AigosError
from aigos.sdk.models import Decision


class BundleRejected(AigosError):
    """The bundle's signature or shape is wrong: it is not used."""

    code = "BUNDLE_REJECTED"


def public_keys(body: Mapping[str, Any]) -> dict[str, bytes]:
    """``{"keys": [{"key_id", "alg", "public_key"}]}`` as key id -> raw Ed25519 public key."""
    keys: dict[str, bytes] = {}
    for item in body.get("keys") or ():
        if isinstance(item, Mapping) and item.get("alg", "Ed25519") == "Ed25519":
            try:
                keys[str(item["key_id"])] = signing.unb64url(str(item["public_key"]))
            except (KeyError, ValueError):
                continue
    return keys


class LocalPolicy:
    """A verified bundle, ready to decide; ``etag`` revalidates it."""

    def __init__(self, bundle: Bundle, etag: str | None) -> None:
        self.bundle = bundle
        self.etag = etag
        self.version = bundle.version
        self.loaded_at = time.monotonic()
        self._status = bundle.subject.status
        try:
            self._expires = datetime.fromisoformat(bundle.expires_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            self._expires = 0.0

    @classmethod
    def load(cls, body: Mapping[str, Any], keys: Mapping[str, bytes], etag: str | None) -> LocalPolicy:
        """Verify ``{"payload", "key_id", "alg", "signature"}`` and compile it; ``BundleRejected`` if bad."""
        payload = body.get("payload")
        key_id = str(body.get("key_id"))
        if not isinstance(payload, Mapping) or body.get("alg") != "Ed25519":
            raise BundleRejected("not a signed Ed25519 bundle")
        key = keys.get(key_id)
        if key is None:
            raise BundleRejected(f"unknown bundle key {key_id!r}", code="UNKNOWN_KEY")
        if not signing.verify(key, payload, str(body.get("signature"))):
            raise BundleRejected("the bundle's signature does not verify", code="BAD_SIGNATURE")
        try:
            return cls(Bundle.from_payload(payload), etag)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleRejected(f"malformed bundle: {exc}") from exc

    @property
    def expired(self) -> bool:
        """Past the bundle's own expiry: the server must decide again."""
        return time.time() >= self._expires

    def decide(
        self, action: str, resource: str, tool: str | None, domain: str | None, status: str
    ) -> Decision | None:
        """The local decision, or ``None`` when the bundle has expired."""
        if time.time() >= self._expires:
            return None
        request = Request(
            action=action,
            resource=resource,
            tool=tool,
            domain=globs.normalize_domain(domain) if domain else None,
        )
        # Re-deriving the subject for another status costs more than the evaluation: only when it differs.
        decided = self.bundle.evaluate(request, status=None if status == self._status else status)
        if decided.needs_rate:
            return None  # rate limits are counters shared by every caller: only the server can count them
        return Decision.local_of(decided, self.version)
