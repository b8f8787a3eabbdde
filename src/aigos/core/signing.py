"""Ed25519 signatures over canonical JSON: audit checkpoints now, kill-switch commands later.

Keys are named by ``key_id``: the first 16 hex characters of the SHA-256 of the raw public key, so a
verifier can pick the right key from a published set without trusting anything else in the message.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aigos.core.canonical import canonical


def b64url(data: bytes) -> str:
    """Unpadded base64url, as in JOSE."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """The inverse of ``b64url``."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key: bytes) -> str:
    """The identifier of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


SEED_SALT = b"aigos-signing-v1"
"""The HKDF salt of ``derive_seed``: part of the wire format, since every derived key depends on it."""


def hkdf_sha256(key_material: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869): ``length`` bytes of output keying material."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key_material)


def derive_seed(secret: bytes, purpose: str) -> bytes:
    """A 32-byte Ed25519 seed derived from a server secret for one purpose (HKDF-SHA256, RFC 5869).

    The salt is ``SEED_SALT`` and the info is the UTF-8 of ``purpose``. Every replica holding the same
    secret derives the same key, so no key needs storing or syncing.
    """
    return hkdf_sha256(secret, salt=SEED_SALT, info=purpose.encode())


@dataclass(frozen=True)
class Signer:
    """An Ed25519 private key that signs canonical JSON payloads."""

    private_key: Ed25519PrivateKey

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        """The signer for a 32-byte seed."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def key_id(self) -> str:
        """This key's identifier."""
        return key_id(self.public_key)

    def sign(self, payload: Mapping[str, Any]) -> str:
        """The base64url signature of ``canonical(payload)``."""
        return b64url(self.private_key.sign(canonical(dict(payload))))


def verify(public_key: bytes, payload: Mapping[str, Any], signature: str) -> bool:
    """Whether ``signature`` is the signature of ``canonical(payload)`` by ``public_key``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(unb64url(signature), canonical(dict(payload)))
    except (InvalidSignature, ValueError):
        return False
    return True
