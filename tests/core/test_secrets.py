"""Bearer secrets: minting, peppered digests, constant-time matching, display prefixes."""

from __future__ import annotations

import hashlib
import hmac
import string

import pytest

from aigos.core import secrets

PREFIX = "aigos_sk_live_"
PEPPER = b"pepper-0123456789abcdef"
URLSAFE = set(string.ascii_letters + string.digits + "-_")


@pytest.mark.parametrize("prefix", [PREFIX, "aigos_pat_", ""])
def test_mint_has_prefix_and_256_bits_of_urlsafe_randomness(prefix: str) -> None:
    secret = secrets.mint(prefix)
    assert secret.startswith(prefix)
    random_part = secret[len(prefix) :]
    assert len(random_part) == 43  # 32 bytes, unpadded base64url
    assert set(random_part) <= URLSAFE


def test_mint_is_unique() -> None:
    minted = {secrets.mint(PREFIX) for _ in range(200)}
    assert len(minted) == 200


def test_digest_is_hmac_sha256_hex() -> None:
    # RFC 4231 test case 2.
    assert secrets.digest("what do ya want for nothing?", b"Jefe") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    value = secrets.digest("aigos_sk_live_abc", PEPPER)
    assert value == hmac.new(PEPPER, b"aigos_sk_live_abc", hashlib.sha256).hexdigest()
    assert len(value) == 64
    assert set(value) <= set("0123456789abcdef")


def test_digest_depends_on_secret_and_pepper() -> None:
    secret = secrets.mint(PREFIX)
    assert secrets.digest(secret, PEPPER) == secrets.digest(secret, PEPPER)
    assert secrets.digest(secret, PEPPER) != secrets.digest(secret, PEPPER + b"x")
    assert secrets.digest(secret, PEPPER) != secrets.digest(secret + "x", PEPPER)
    assert secrets.digest(secret, PEPPER) != hashlib.sha256(secret.encode()).hexdigest()


def test_digest_of_non_ascii_secret_uses_utf8() -> None:
    assert secrets.digest("clé", PEPPER) == hmac.new(PEPPER, "clé".encode(), hashlib.sha256).hexdigest()


def test_matches() -> None:
    secret = secrets.mint(PREFIX)
    stored = secrets.digest(secret, PEPPER)
    assert secrets.matches(secret, stored, PEPPER)
    assert not secrets.matches(secret + "x", stored, PEPPER)
    assert not secrets.matches(secret[:-1], stored, PEPPER)
    assert not secrets.matches(secrets.mint(PREFIX), stored, PEPPER)
    assert not secrets.matches(secret, stored, PEPPER + b"x")
    assert not secrets.matches(secret, stored.upper(), PEPPER)
    assert not secrets.matches(secret, stored[:-1] + ("0" if stored[-1] != "0" else "1"), PEPPER)
    assert not secrets.matches(secret, stored[:32], PEPPER)
    assert not secrets.matches(secret, "", PEPPER)


def test_display_prefix() -> None:
    secret = secrets.mint(PREFIX)
    shown = secrets.display_prefix(secret, PREFIX)
    assert shown == secret[: len(PREFIX) + secrets.DISPLAY_RANDOM_CHARS]
    assert len(shown) == len(PREFIX) + 8
    assert secret.startswith(shown)
    assert secrets.display_prefix("aigos_sk_live_abc", PREFIX) == "aigos_sk_live_abc"
    assert secrets.display_prefix("", PREFIX) == ""
