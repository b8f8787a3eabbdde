"""Signed kill-switch commands: signing, verification, expiry, wrong agent, replays and reordering."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aigos.core.commands import (
    CommandRejected,
    ReplayGuard,
    SignedCommand,
    format_time,
    sign_command,
    verify_command,
)
from aigos.core.signing import Signer, derive_seed

SIGNER = Signer.from_seed(derive_seed(b"test-pepper", "kill-switch"))
KEYS = {SIGNER.key_id: SIGNER.public_key}
AGENT = "6f1c2b1e-0000-4000-8000-000000000001"
NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def make(sequence: int = 1, command_id: str | None = None, **overrides: Any) -> SignedCommand:
    fields: dict[str, Any] = {
        "command_id": command_id or f"c-{sequence}",
        "tenant_id": "t-1",
        "agent_id": AGENT,
        "command": "TERMINATE",
        "reason": "test",
        "issued_at": NOW,
        "expires_at": NOW + timedelta(hours=1),
        "nonce": f"n-{sequence}",
        "sequence": sequence,
        **overrides,
    }
    return sign_command(SIGNER, **fields)


def rejected(call: Any) -> str:
    with pytest.raises(CommandRejected) as info:
        call()
    return info.value.code


def test_signed_command_round_trips_and_verifies() -> None:
    command = make()
    assert command.issued_at == "2026-11-23T12:00:00.000Z"
    assert command.alg == "Ed25519"
    assert command.key_id == SIGNER.key_id
    again = SignedCommand.from_json(command.to_json())
    assert again == command
    assert "signature" not in again.signing_payload()
    verify_command(KEYS, again, now=NOW, agent_id=AGENT)
    verify_command(KEYS, again, now=NOW, agent_id=AGENT.upper())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("command", "PAUSE"),
        ("agent_id", "someone-else"),
        ("tenant_id", "t-2"),
        ("reason", "other"),
        ("expires_at", "2099-01-01T00:00:00.000Z"),
        ("nonce", "n-other"),
        ("sequence", 99),
    ],
)
def test_any_change_breaks_the_signature(field: str, value: Any) -> None:
    tampered = dataclasses.replace(make(), **{field: value})
    assert rejected(lambda: verify_command(KEYS, tampered, now=NOW)) == "BAD_SIGNATURE"


def test_rejections() -> None:
    command = make()
    other = Signer.from_seed(derive_seed(b"other", "kill-switch"))
    assert (
        rejected(lambda: verify_command({other.key_id: other.public_key}, command, now=NOW)) == "UNKNOWN_KEY"
    )
    forged = dataclasses.replace(command, key_id=other.key_id)
    assert (
        rejected(lambda: verify_command({other.key_id: other.public_key}, forged, now=NOW)) == "BAD_SIGNATURE"
    )
    later = NOW + timedelta(hours=1)
    assert rejected(lambda: verify_command(KEYS, command, now=later)) == "EXPIRED"
    assert rejected(lambda: verify_command(KEYS, command, now=NOW, agent_id="x")) == "WRONG_AGENT"


@pytest.mark.parametrize(
    "data",
    [
        "not an object",
        {},
        {**make().to_json(), "sequence": "1"},
        {**make().to_json(), "sequence": 0},
        {**make().to_json(), "sequence": True},
        {**make().to_json(), "command": "EXPLODE"},
        {**make().to_json(), "alg": "HS256"},
        {**make().to_json(), "issued_at": "yesterday"},
        {**make().to_json(), "expires_at": "2026-01-01T00:00:00"},
    ],
)
def test_malformed_commands(data: Any) -> None:
    assert rejected(lambda: SignedCommand.from_json(data)) == "MALFORMED"


def test_replay_guard_rejects_replays_and_reordering() -> None:
    guard = ReplayGuard()
    first, second, third = make(1), make(2), make(3)
    guard.check(first)
    guard.accept(first)
    assert rejected(lambda: guard.check(first)) == "REPLAYED"
    guard.check(third)
    guard.accept(third)
    assert guard.highest(AGENT) == 3
    assert rejected(lambda: guard.check(second)) == "OUT_OF_ORDER"
    # The same sequence under a fresh id (a re-signed replay) is still out of order.
    assert rejected(lambda: guard.check(make(3, command_id="new"))) == "OUT_OF_ORDER"
    # Other agents have their own sequences.
    guard.check(make(1, command_id="x", agent_id="another"))


def test_replay_guard_memory_is_bounded() -> None:
    guard = ReplayGuard(max_ids=2)
    for sequence in range(1, 5):
        guard.accept(make(sequence))
    assert guard.highest(AGENT) == 4
    # Forgotten ids are still caught by their sequence.
    assert rejected(lambda: guard.check(make(1))) == "OUT_OF_ORDER"


def test_format_time_needs_an_offset() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 1, 1))
    assert format_time(datetime(2026, 1, 1, 1, tzinfo=UTC) + timedelta(microseconds=1500)) == (
        "2026-01-01T01:00:00.001Z"
    )
