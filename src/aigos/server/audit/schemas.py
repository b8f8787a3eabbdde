"""API shapes of the audit context: entries exactly as hashed, checkpoints, proofs, keys, reports."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

#: Who may cause an event (``NewEvent.actor_type``); the ``actor_type`` filter accepts these only.
ActorType = Literal["api_key", "platform", "session", "user", "agent", "system"]
Source = Literal["server", "agent"]


class AuditActor(BaseModel):
    """Who caused the event."""

    type: str
    id: str | None


class AuditEntry(BaseModel):
    """One entry of the tenant's log, every field as covered by ``hash``.

    ``hash`` is the SHA-256 of the canonical JSON of all other fields (``prev_hash`` included), so anyone
    can recompute it; ``timestamp`` and ``recorded_at`` are strings because their exact text is hashed.
    """

    tenant_id: str
    seq: int = Field(description="Position in the tenant's log, from 1, without gaps.")
    event_id: str
    event_type: str = Field(description="Dotted, context first: `tenant.created`, `api_key.rotated`, ...")
    agent_id: str | None
    timestamp: str = Field(description="When the event happened (UTC, microseconds, `Z`).")
    recorded_at: str = Field(description="When the log recorded it (UTC, microseconds, `Z`).")
    actor: AuditActor
    source: str
    outcome: str | None
    request_id: str | None
    trace_id: str | None
    span_id: str | None
    data: dict[str, Any]
    prev_hash: str = Field(description="The previous entry's `hash` (64 zeros before the first entry).")
    hash: str


class SignedCheckpoint(BaseModel):
    """A signed tree head: the Merkle root and chain head of the tenant's log at ``tree_size``.

    ``signature`` is the Ed25519 signature (base64url) of the canonical JSON of every other field, by the
    key ``key_id`` published at `GET /v1/audit/keys`.
    """

    type: str
    tenant_id: str
    tree_size: int
    root_hash: str
    head_hash: str
    issued_at: str
    key_id: str
    signature: str


class InclusionProof(BaseModel):
    """An RFC 9162 inclusion proof of one entry in the tree signed by ``checkpoint``.

    Check it with the leaf ``SHA-256(0x00 || bytes.fromhex(entry.hash))`` at ``leaf_index`` in a tree of
    ``tree_size`` leaves against ``checkpoint.root_hash`` (RFC 9162 section 2.1.3.2), after recomputing
    ``entry.hash`` from the entry and checking the checkpoint's signature.
    """

    entry: AuditEntry
    leaf_index: int = Field(description="The entry's leaf index: `seq - 1`.")
    tree_size: int
    proof: list[str] = Field(description="The audit path, hex, from the leaf upwards.")
    checkpoint: SignedCheckpoint


class AuditKey(BaseModel):
    """A checkpoint-signing key."""

    key_id: str = Field(description="The first 16 hex characters of SHA-256 of the raw public key.")
    alg: Literal["Ed25519"]
    public_key: str = Field(description="The raw 32-byte public key, unpadded base64url.")


class AuditKeys(BaseModel):
    """The keys that sign this server's checkpoints: pin them to verify exports independently."""

    keys: list[AuditKey]


class AuditVerifyFailure(BaseModel):
    """Where verification stopped: the export line, and the entry when there is one."""

    line: int
    seq: int | None
    event_id: str | None
    reason: str


class AuditVerifyReport(BaseModel):
    """The outcome of verifying the tenant's export (``aigos audit verify`` prints the same)."""

    ok: bool
    tenant_id: str | None
    entries: int
    first_seq: int | None
    last_seq: int | None
    checkpoints: int
    sealed_through: int = Field(description="The largest tree size a verified checkpoint covers.")
    unsealed: int = Field(description="Entries after the last checkpoint.")
    key_ids: list[str]
    losses: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Entries recording acknowledged events that were lost (`audit.events_dropped`, "
        "`audit.events_lost`): `seq`, `event_type`, `count`, `reason` and what else they know (process, "
        "time range).",
    )
    lost: int = Field(0, description="Events those entries count (at least).")
    failure: AuditVerifyFailure | None
