"""AIGRC's event envelope (EVT-001): what AIGOS sends back to AIGRC about the agents of an asset card.

``id`` is ``evt_`` + the first 32 hex characters of sha256 over ``orgId:tool:type:assetId:floor10ms``, where
the last part is the event's time in epoch milliseconds floored to a multiple of 10; ``hash`` is ``sha256:``
+ sha256 over the envelope without ``hash``, ``signature`` and ``receivedAt``, keys sorted at every depth,
compact JSON (``aigos.core.canonical``). ``goldenThread`` is either linked (``system``, ``ref``, ``url``,
``status``) or an orphan (``reason``, ``declaredBy``, ``declaredAt``, ``remediationDeadline``,
``remediationNote``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aigos.core.canonical import canonical

#: The ``tool`` every envelope AIGOS makes names.
TOOL = "aigos"
#: Left out of the hash: what a signer or a receiver adds afterwards.
UNHASHED = frozenset({"hash", "signature", "receivedAt"})


def event_id(org_id: str, event_type: str, asset_id: str, at: datetime, tool: str = TOOL) -> str:
    """The envelope's ``id``: stable for the same org, tool, type, asset and 10-millisecond slot."""
    millis = int(at.astimezone(UTC).timestamp() * 1000) // 10 * 10
    digest = hashlib.sha256(f"{org_id}:{tool}:{event_type}:{asset_id}:{millis}".encode()).hexdigest()
    return "evt_" + digest[:32]


def envelope_hash(envelope: Mapping[str, Any]) -> str:
    """``sha256:`` over the envelope without its ``hash``, ``signature`` and ``receivedAt``."""
    hashed = {key: value for key, value in envelope.items() if key not in UNHASHED}
    return "sha256:" + hashlib.sha256(canonical(hashed)).hexdigest()


def envelope(
    org_id: str,
    event_type: str,
    asset_id: str,
    at: datetime,
    data: Mapping[str, Any],
    golden_thread: Mapping[str, Any],
) -> dict[str, Any]:
    """An EVT-001 envelope of one event about asset ``asset_id``, hashed."""
    made: dict[str, Any] = {
        "id": event_id(org_id, event_type, asset_id, at),
        "type": event_type,
        "tool": TOOL,
        "orgId": org_id,
        "assetId": asset_id,
        "timestamp": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
        "goldenThread": dict(golden_thread),
        "data": dict(data),
    }
    made["hash"] = envelope_hash(made)
    return made


def linked_thread(ticket_id: str, verified: bool, url: str | None = None) -> dict[str, Any]:
    """A ``goldenThread`` linked to the approval ticket ``ticket_id``."""
    thread: dict[str, Any] = {
        "type": "linked",
        "system": "aigrc",
        "ref": ticket_id,
        "status": "verified" if verified else "unverified",
    }
    if url:
        thread["url"] = url
    return thread


def orphan_thread(reason: str, declared_by: str, declared_at: str) -> dict[str, Any]:
    """A ``goldenThread`` for an event with no approval to link to."""
    return {
        "type": "orphan",
        "reason": reason,
        "declaredBy": declared_by,
        "declaredAt": declared_at,
        "remediationDeadline": None,
        "remediationNote": None,
    }
