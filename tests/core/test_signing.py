"""Ed25519 over canonical JSON: signers, verification, key ids, seed derivation, base64url."""

from __future__ import annotations

import base64
import hashlib
import string
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aigos.core.canonical import NotCanonicalizable, canonical
from aigos.core.signing import Signer, b64url, derive_seed, key_id, unb64url, verify

# RFC 8032 section 7.1, TEST 1.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_EMPTY_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

SIGNER = Signer.from_seed(derive_seed(b"test-server-secret", "audit-checkpoints"))
OTHER = Signer.from_seed(derive_seed(b"test-server-secret", "kill-switch"))

PAYLOADS: list[dict[str, Any]] = [
    {},
    {"type": "aigos.audit.checkpoint.v1", "tree_size": 42, "root_hash": "ab" * 32},
    {"nested": {"b": [1, 2, {"z": None, "a": True}], "a": 1.5}, "unicode": "Zoë ✓ 日本 😀"},
    {"big": 2**63 - 1, "neg": -(2**63), "empty": "", "list": []},
]


def test_signer_from_rfc8032_seed() -> None:
    signer = Signer.from_seed(RFC8032_SEED)
    assert signer.public_key == RFC8032_PUBLIC
    assert signer.private_key.sign(b"") == RFC8032_EMPTY_SIGNATURE
    assert signer.key_id == hashlib.sha256(RFC8032_PUBLIC).hexdigest()[:16]


def test_signature_is_ed25519_over_the_canonical_bytes() -> None:
    payload = {"b": 2, "a": "ü"}
    signature = SIGNER.sign(payload)
    expected = SIGNER.private_key.sign(canonical(payload))
    assert unb64url(signature) == expected
    assert len(unb64url(signature)) == 64
    assert "=" not in signature


@pytest.mark.parametrize("payload", PAYLOADS)
def test_sign_verify_round_trip(payload: dict[str, Any]) -> None:
    signature = SIGNER.sign(payload)
    assert verify(SIGNER.public_key, payload, signature)
    # Ed25519 is deterministic.
    assert SIGNER.sign(payload) == signature


def test_signature_ignores_key_order_of_the_payload() -> None:
    forward = {"a": 1, "b": {"c": 2, "d": 3}}
    backward = {"b": {"d": 3, "c": 2}, "a": 1}
    assert SIGNER.sign(forward) == SIGNER.sign(backward)
    assert verify(SIGNER.public_key, backward, SIGNER.sign(forward))


@pytest.mark.parametrize(
    "altered",
    [
        {"type": "aigos.audit.checkpoint.v1", "tree_size": 43, "root_hash": "ab" * 32},
        {"type": "aigos.audit.checkpoint.v1", "tree_size": "42", "root_hash": "ab" * 32},
        {"type": "aigos.audit.checkpoint.v1", "tree_size": 42.0, "root_hash": "ab" * 32},
        {"type": "aigos.audit.checkpoint.v1", "tree_size": 42, "root_hash": "ab" * 31 + "ac"},
        {"type": "aigos.audit.checkpoint.v1", "tree_size": 42},
        {"type": "aigos.audit.checkpoint.v1", "tree_size": 42, "root_hash": "ab" * 32, "extra": None},
        {"type": "aigos.audit.checkpoint.v2", "tree_size": 42, "root_hash": "ab" * 32},
        {},
    ],
)
def test_verify_fails_for_an_altered_payload(altered: dict[str, Any]) -> None:
    signature = SIGNER.sign(PAYLOADS[1])
    assert verify(SIGNER.public_key, PAYLOADS[1], signature)
    assert not verify(SIGNER.public_key, altered, signature)


def test_verify_fails_under_another_key() -> None:
    signature = SIGNER.sign(PAYLOADS[1])
    assert OTHER.public_key != SIGNER.public_key
    assert not verify(OTHER.public_key, PAYLOADS[1], signature)
    assert not verify(OTHER.public_key, PAYLOADS[1], OTHER.sign(PAYLOADS[2]))
    assert verify(OTHER.public_key, PAYLOADS[1], OTHER.sign(PAYLOADS[1]))


def _garbage_signatures() -> list[str]:
    good = SIGNER.sign(PAYLOADS[1])
    raw = unb64url(good)
    flipped = bytes([raw[0] ^ 1]) + raw[1:]
    return [
        "",
        "a",  # impossible base64 length
        "!!!!",
        "not a signature at all",
        b64url(b"\x00" * 64),
        b64url(flipped),
        b64url(raw[:63]),
        b64url(raw + b"\x00"),
        good[:-2],
        good + "AA",
        good[::-1],
    ]


@pytest.mark.parametrize("signature", _garbage_signatures())
def test_verify_fails_for_garbage_signatures(signature: str) -> None:
    assert not verify(SIGNER.public_key, PAYLOADS[1], signature)


@pytest.mark.parametrize("public_key", [b"", b"\x00" * 31, b"\x00" * 33, SIGNER.public_key[:16]])
def test_verify_fails_for_malformed_public_keys(public_key: bytes) -> None:
    assert not verify(public_key, PAYLOADS[1], SIGNER.sign(PAYLOADS[1]))


def test_non_canonicalizable_payloads() -> None:
    with pytest.raises(NotCanonicalizable):
        SIGNER.sign({"n": 2**64})
    # Verification never raises: such a payload simply has no valid signature.
    assert not verify(SIGNER.public_key, {"n": 2**64}, SIGNER.sign(PAYLOADS[1]))


def test_derive_seed_is_deterministic_and_32_bytes() -> None:
    first = derive_seed(b"secret", "audit-checkpoints")
    assert first == derive_seed(b"secret", "audit-checkpoints")
    assert len(first) == 32
    assert (
        Signer.from_seed(first).key_id == Signer.from_seed(derive_seed(b"secret", "audit-checkpoints")).key_id
    )


def test_derive_seed_is_hkdf_sha256() -> None:
    secret = b"test-server-secret-0123456789"
    for purpose in ("audit-checkpoints", "kill-switch", "", "ünïcode"):
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"aigos-signing-v1", info=purpose.encode())
        assert derive_seed(secret, purpose) == hkdf.derive(secret)


def test_derive_seed_separates_purposes_and_secrets() -> None:
    purposes = ["audit-checkpoints", "kill-switch", "audit", "audit-checkpoints ", "Audit-checkpoints", ""]
    seeds = {derive_seed(b"secret", purpose) for purpose in purposes}
    assert len(seeds) == len(purposes)
    assert derive_seed(b"secret", "audit") != derive_seed(b"secret2", "audit")
    assert derive_seed(b"", "audit") != derive_seed(b"\x00", "audit")
    keys = {Signer.from_seed(derive_seed(b"secret", purpose)).public_key for purpose in purposes}
    assert len(keys) == len(purposes)


@pytest.mark.parametrize("signer", [SIGNER, OTHER, Signer.from_seed(RFC8032_SEED)])
def test_key_id_is_16_hex_of_sha256_of_the_raw_public_key(signer: Signer) -> None:
    assert len(signer.public_key) == 32
    kid = key_id(signer.public_key)
    assert kid == hashlib.sha256(signer.public_key).hexdigest()[:16]
    assert len(kid) == 16
    assert set(kid) <= set(string.hexdigits.lower())
    assert signer.key_id == kid


def test_key_ids_differ_between_keys() -> None:
    assert SIGNER.key_id != OTHER.key_id


@pytest.mark.parametrize("length", range(0, 70))
def test_b64url_round_trip_without_padding(length: int) -> None:
    data = bytes((i * 37 + length) % 256 for i in range(length))
    text = b64url(data)
    assert "=" not in text
    assert set(text) <= set(string.ascii_letters + string.digits + "-_")
    assert len(text) == -(-length * 4 // 3)
    assert text == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert unb64url(text) == data


def test_b64url_uses_the_url_safe_alphabet() -> None:
    assert b64url(b"") == ""
    assert b64url(b"\xfb\xff") == "-_8"
    assert unb64url("-_8") == b"\xfb\xff"
    assert b64url(b"\xff" * 3) == "____"
