"""Token-signing keys: generated on demand, encrypted at rest, published as a JWKS, rotated without downtime.

Every replica holds the published keys in memory. Signing uses the newest active key; verifying accepts
any published key, so a token signed just before a rotation stays valid until it expires. A retired key
is published until ``publish_until`` (its last token's expiry plus leeway), then dropped. ``list_keys``
is the listing both the admin API and ``aigos keys`` show.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import ECKey, KeySet, OKPKey
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigos.core.signing import derive_seed
from aigos.server.db import Database
from aigos.server.db.types import utcnow
from aigos.server.identity.models import SigningKey
from aigos.server.identity.schemas import SigningKeyList, SigningKeyOut

log = structlog.get_logger("aigos.keys")

ALGORITHMS = ("ES256", "EdDSA")
_ROTATION_LOCK = 0x41_49_47_4B_45_59  # "AIGKEY": any constant shared by every AIGOS process
JoseKey = ECKey | OKPKey


class KeyEncryption:
    """AES-256-GCM with a key derived from the server secret; the key's id binds each ciphertext."""

    def __init__(self, pepper: bytes) -> None:
        self._aead = AESGCM(derive_seed(pepper, "signing-key-encryption"))

    def encrypt(self, plaintext: bytes, associated: bytes) -> str:
        """``v1.<base64url(nonce || ciphertext)>``."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, associated)
        return "v1." + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, token: str, associated: bytes) -> bytes:
        """The inverse of ``encrypt``; raises if the ciphertext or its association was altered."""
        version, _, body = token.partition(".")
        if version != "v1":
            raise ValueError(f"unknown key encryption version {version!r}")
        raw = base64.urlsafe_b64decode(body)
        return self._aead.decrypt(raw[:12], raw[12:], associated)


def generate(alg: str) -> JoseKey:
    """A new private key for ``alg`` (ES256: P-256; EdDSA: Ed25519)."""
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", private=True)
    raise ValueError(f"unsupported signing algorithm {alg!r}; use one of {ALGORITHMS}")


def _import(alg: str, pem: bytes, kid: str) -> JoseKey:
    # The kid travels with the key object: joserfc selects verification keys by it.
    parameters = {"kid": kid}
    if alg == "ES256":
        return ECKey.import_key(pem, parameters=parameters)  # type: ignore[arg-type]
    return OKPKey.import_key(pem, parameters=parameters)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LoadedKey:
    """A usable key: its id, algorithm and private key."""

    kid: str
    alg: str
    key: JoseKey
    created_at: datetime


class SigningKeys:
    """The process's view of the signing keys."""

    def __init__(self, database: Database, pepper: bytes, alg: str = "ES256", token_ttl: int = 3600) -> None:
        self.database = database
        self.encryption = KeyEncryption(pepper)
        self.alg = alg
        self.token_ttl = token_ttl
        self._keys: dict[str, LoadedKey] = {}
        self._active: LoadedKey | None = None
        self._keyset = KeySet([])
        self._lock = asyncio.Lock()
        self._reloaded_at = 0.0

    @property
    def active(self) -> LoadedKey:
        """The key new tokens are signed with."""
        if self._active is None:
            raise RuntimeError("signing keys not loaded")
        return self._active

    @property
    def keyset(self) -> KeySet:
        """Every published key, for verification."""
        return self._keyset

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set."""
        keys = []
        for loaded in sorted(self._keys.values(), key=lambda k: k.created_at, reverse=True):
            public = loaded.key.as_dict(private=False)
            keys.append({**public, "kid": loaded.kid, "alg": loaded.alg, "use": "sig"})
        return {"keys": keys}

    def knows(self, kid: str) -> bool:
        """Whether ``kid`` is a published key here."""
        return kid in self._keys

    async def start(self) -> None:
        """Load the keys, creating the first one if the deployment has none."""
        await self.reload()
        if self._active is None:
            await self._create()
            await self.reload()

    async def reload_if_stale(self, min_interval: float = 5.0) -> bool:
        """Reload unless a reload happened within ``min_interval`` seconds (unknown kids can be forged
        by anyone; they must not turn into a database query each)."""
        now = time.monotonic()
        if now - self._reloaded_at < min_interval:
            return False
        await self.reload()
        return True

    async def reload(self) -> None:
        """Read the published keys from the database (after a rotation elsewhere, or an unknown kid)."""
        async with self._lock:
            self._reloaded_at = time.monotonic()
            now = utcnow()
            async with self.database.session() as session:
                rows = (await session.scalars(select(SigningKey))).all()
            keys: dict[str, LoadedKey] = {}
            for row in rows:
                if row.status != "active" and row.publish_until is not None and row.publish_until <= now:
                    continue
                pem = self.encryption.decrypt(row.private_key_encrypted, row.kid.encode())
                keys[row.kid] = LoadedKey(row.kid, row.alg, _import(row.alg, pem, row.kid), row.created_at)
            active = [
                keys[row.kid]
                for row in rows
                if row.status == "active" and row.kid in keys and row.alg == self.alg
            ]
            self._keys = keys
            self._active = max(active, key=lambda k: (k.created_at, k.kid)) if active else None
            self._keyset = KeySet([loaded.key for loaded in keys.values()])

    async def rotate(self) -> str:
        """Make a new active key and retire the others (published until their tokens have expired)."""
        async with self.database.session() as session:
            if session.bind is not None and session.bind.dialect.name == "postgresql":
                # Two rotations at once must not retire each other's new key: they take turns.
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ROTATION_LOCK})
            await session.execute(
                update(SigningKey)
                .where(SigningKey.status == "active")
                .values(
                    status="retired",
                    retired_at=utcnow(),
                    publish_until=utcnow() + timedelta(seconds=self.token_ttl + 300),
                )
            )
            kid = self._add(session)
        await self.reload()
        log.info("signing_key_rotated", kid=kid)
        return kid

    async def _create(self) -> str:
        async with self.database.session() as session:
            return self._add(session)

    def _add(self, session: AsyncSession) -> str:
        """Generate a key and add it, encrypted, to the session's transaction; returns its kid."""
        key = generate(self.alg)
        kid = key.thumbprint()
        pem = key.as_pem(private=True)
        session.add(
            SigningKey(
                kid=kid,
                alg=self.alg,
                public_jwk={**key.as_dict(private=False), "kid": kid, "alg": self.alg, "use": "sig"},
                private_key_encrypted=self.encryption.encrypt(pem, kid.encode()),
                status="active",
                created_at=utcnow(),
            )
        )
        return kid


async def list_keys(database: Database, keys: SigningKeys) -> SigningKeyList:
    """All signing keys in the database, newest first, as ``keys`` (this process's view) signs with them."""
    now = utcnow()
    async with database.session() as session:
        rows = (await session.scalars(select(SigningKey).order_by(SigningKey.created_at.desc()))).all()
    active = keys.active.kid
    return SigningKeyList(
        active_kid=active,
        keys=[
            SigningKeyOut(
                kid=row.kid,
                alg=row.alg,
                status="active" if row.status == "active" else "retired",
                created_at=row.created_at,
                retired_at=row.retired_at,
                publish_until=row.publish_until,
                published=row.status == "active" or row.publish_until is None or row.publish_until > now,
                signing=row.kid == active,
            )
            for row in rows
        ],
    )
