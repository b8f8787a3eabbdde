"""Ed25519 over canonical JSON: signers, verification, key ids, seed derivation, base64url."""

from __future__ import annotations

import base64
import hashlib
import string
from typing import Any

import pytest

from aigos.core.canonical import NotCanonicalizable, canonical
from aigos.core.signing import SEED_SALT, Signer, b64url, derive_seed, hkdf_sha256, key_id, unb64url, verify

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


# Seeds derived before HKDF came from `cryptography`: keys already in use must stay the same bytes.
DERIVED_SEEDS = [
    (
        b"test-server-secret",
        "audit-checkpoint",
        "ea354ae12ccf79d01f6c45dc7789256fb1293d895f312dab7ff568f475477e9e",
    ),
    (
        b"test-server-secret",
        "kill-switch",
        "1cfd199d69c266043e5d17101747c5976636e54fcb57653ef461ea6f82461ef0",
    ),
    (b"", "policy-bundle", "bc840ed4f2e1078749eae45de2ca004dc127521232730b24b3751026030c9686"),
    (
        b"\x00" * 32,
        "signing-key-encryption",
        "07aea509527f51afb0d5f2dad987616149addd96e4b30840a18f2362a31803d4",
    ),
    ("pepper-ü".encode(), "zoë ✓", "ac567a18d2008991005f9e0a4bcbde75ea47b910d238c3afee13a14df7b1ae3f"),
]


@pytest.mark.parametrize(("secret", "purpose", "seed"), DERIVED_SEEDS)
def test_derive_seed_matches_the_seeds_already_in_use(secret: bytes, purpose: str, seed: str) -> None:
    assert derive_seed(secret, purpose).hex() == seed


# RFC 5869 appendix A, test cases 1-3 (SHA-256): key material, salt, info, length, output.
RFC5869 = [
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09"
        "da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(("key_material", "salt", "info", "length", "output"), RFC5869)
def test_hkdf_sha256_rfc5869_vectors(
    key_material: str, salt: str, info: str, length: int, output: str
) -> None:
    derived = hkdf_sha256(
        bytes.fromhex(key_material), salt=bytes.fromhex(salt), info=bytes.fromhex(info), length=length
    )
    assert derived.hex() == output


def test_derive_seed_is_hkdf_sha256_with_the_aigos_salt() -> None:
    assert derive_seed(b"secret", "kill-switch") == hkdf_sha256(
        b"secret", salt=SEED_SALT, info=b"kill-switch"
    )


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
