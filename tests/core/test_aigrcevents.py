"""EVT-001 envelopes, checked against the rules written out by hand (the spec publishes no vectors)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

from aigos.core import aigrcevents

AT = datetime(2025, 1, 15, 10, 30, 0, 123_456, tzinfo=UTC)


def test_the_id_hashes_org_tool_type_asset_and_the_10ms_slot() -> None:
    expected = hashlib.sha256(b"org-1:aigos:policy.violated:aigrc-2025-0a1b2c3d:1736937000120").hexdigest()
    assert (
        aigrcevents.event_id("org-1", "policy.violated", "aigrc-2025-0a1b2c3d", AT) == "evt_" + expected[:32]
    )
    # The same 10-millisecond slot, whatever the zone it is written in: the same id.
    same = (AT + timedelta(microseconds=5_000)).astimezone(timezone(timedelta(hours=2)))
    assert aigrcevents.event_id(
        "org-1", "policy.violated", "aigrc-2025-0a1b2c3d", same
    ) == aigrcevents.event_id("org-1", "policy.violated", "aigrc-2025-0a1b2c3d", AT)
    later = AT + timedelta(milliseconds=10)
    assert aigrcevents.event_id(
        "org-1", "policy.violated", "aigrc-2025-0a1b2c3d", later
    ) != aigrcevents.event_id("org-1", "policy.violated", "aigrc-2025-0a1b2c3d", AT)


def test_the_hash_covers_everything_but_hash_signature_and_received_at() -> None:
    thread = aigrcevents.linked_thread("FIN-1234", True)
    made = aigrcevents.envelope("org-1", "agent.live", "aigrc-2025-0a1b2c3d", AT, {"b": 1, "a": [2]}, thread)
    assert made["timestamp"] == "2025-01-15T10:30:00.123Z"
    body = {k: v for k, v in made.items() if k != "hash"}
    by_hand = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert made["hash"] == "sha256:" + hashlib.sha256(by_hand).hexdigest()
    signed = {**made, "signature": "x", "receivedAt": "2025-01-15T10:30:01Z"}
    assert aigrcevents.envelope_hash(signed) == made["hash"]
    assert aigrcevents.envelope_hash({**made, "data": {"b": 2}}) != made["hash"]


def test_golden_thread_forms() -> None:
    assert aigrcevents.linked_thread("FIN-1", False, "https://t/1") == {
        "type": "linked",
        "system": "aigrc",
        "ref": "FIN-1",
        "status": "unverified",
        "url": "https://t/1",
    }
    orphan = aigrcevents.orphan_thread("no card", "aigos", "2025-01-15T10:30:00Z")
    assert set(orphan) == {
        "type",
        "reason",
        "declaredBy",
        "declaredAt",
        "remediationDeadline",
        "remediationNote",
    }
