"""The audit log's mathematics: entry hashes, the chain, checkpoints and ``verify_export``.

``build_export`` writes an NDJSON export exactly as the server does (a header, then the events in order, each
checkpoint right after the event at its ``tree_size``); each test then tampers with it the way an attacker
or a broken copy would and checks the verifier names the exact line and entry.
"""

from __future__ import annotations

import hashlib
import itertools
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigos.core.auditlog import (
    CHECKPOINT_FIELDS,
    CHECKPOINT_TYPE,
    ENTRY_FIELDS,
    EXPORT_FORMAT,
    GENESIS_HASH,
    MAX_LINE_BYTES,
    ExportVerifier,
    Failure,
    Report,
    checkpoint_payload,
    entry_hash,
    entry_leaf,
    sign_checkpoint,
    verify_checkpoint,
    verify_export,
)
from aigos.core.canonical import canonical
from aigos.core.merkle import EMPTY_ROOT, CompactRange, leaf_hash
from aigos.core.signing import Signer, b64url, derive_seed

TENANT = "tenant-7f3a"
SIGNER = Signer.from_seed(derive_seed(b"test-server-secret", "audit-checkpoints"))
ATTACKER = Signer.from_seed(derive_seed(b"attacker-secret", "audit-checkpoints"))
KEYS = {SIGNER.key_id: SIGNER.public_key}

Record = dict[str, Any]


# --- Building exports -------------------------------------------------------------------------------------


def event_id(seq: int) -> str:
    return f"evt-{seq:04d}"


def make_entry(seq: int, prev_hash: str, tenant: str = TENANT) -> Record:
    """An entry with every field of ``ENTRY_FIELDS`` and a mix of JSON types in ``data``."""
    values: Record = {
        "tenant_id": tenant,
        "seq": seq,
        "event_id": event_id(seq),
        "event_type": "tool.call" if seq % 2 else "policy.decision",
        "agent_id": f"agent-{seq % 3}",
        "timestamp": f"2025-03-01T10:{seq // 60:02d}:{seq % 60:02d}Z",
        "recorded_at": f"2025-03-01T10:{seq // 60:02d}:{seq % 60:02d}.5Z",
        "actor": {"type": "agent", "id": f"agent-{seq % 3}"},
        "source": "sdk",
        "outcome": "allowed" if seq % 5 else "denied",
        "request_id": f"req-{seq}",
        "trace_id": None if seq % 4 else f"{seq:032x}",
        "span_id": None,
        "data": {"n": seq, "note": "héllo ✓", "tags": ["a", "b"], "ratio": seq / 8, "ok": True},
        "prev_hash": prev_hash,
    }
    return {name: values[name] for name in ENTRY_FIELDS}


def event_record(entry: Record) -> Record:
    return {"kind": "event", **entry, "hash": entry_hash(entry)}


def checkpoint_record(
    signer: Signer, tree_size: int, root: bytes, head: str, tenant: str = TENANT, key_id: str | None = None
) -> Record:
    payload = checkpoint_payload(
        tenant,
        tree_size,
        root.hex(),
        head,
        f"2025-03-01T11:00:{tree_size % 60:02d}Z",
        key_id or signer.key_id,
    )
    return {"kind": "checkpoint", **sign_checkpoint(signer, payload)}


def header_record(signers: list[Signer], anchor: Record | None = None, tenant: str = TENANT) -> Record:
    return {
        "kind": "header",
        "format": EXPORT_FORMAT,
        "tenant_id": tenant,
        "keys": [{"key_id": s.key_id, "public_key": b64url(s.public_key)} for s in signers],
        "anchor": anchor,
    }


def build_records(
    n_events: int, checkpoint_every: int, signer: Signer, anchor: int | None = None
) -> list[Record]:
    """Header, events ``1..n_events`` and a checkpoint after every ``checkpoint_every``-th event.

    With ``anchor``, entries ``1..anchor`` (and their checkpoints) are pruned and the header carries the
    anchor: the chain head and compact range after entry ``anchor``.
    """
    records: list[Record] = []
    compact = CompactRange()
    head = GENESIS_HASH
    anchor_json: Record | None = None
    if anchor == 0:
        anchor_json = {"seq": 0, "head_hash": head, "compact_range": compact.to_json()}
    for seq in range(1, n_events + 1):
        record = event_record(make_entry(seq, head))
        head = record["hash"]
        compact.append(entry_leaf(head))
        if anchor is not None and seq <= anchor:
            if seq == anchor:
                anchor_json = {"seq": seq, "head_hash": head, "compact_range": compact.to_json()}
            continue
        records.append(record)
        if checkpoint_every and seq % checkpoint_every == 0:
            records.append(checkpoint_record(signer, seq, compact.root(), head))
    return [header_record([signer], anchor_json), *records]


def dump(records: list[Record]) -> list[bytes]:
    return [orjson.dumps(record) for record in records]


def build_export(
    n_events: int, checkpoint_every: int, signer: Signer, anchor: int | None = None
) -> list[bytes]:
    """The NDJSON lines (bytes, as read from a file in binary mode) of an export."""
    return dump(build_records(n_events, checkpoint_every, signer, anchor))


def load(lines: list[bytes]) -> list[Record]:
    return [orjson.loads(line) for line in lines]


def index_of_event(records: list[Record], seq: int) -> int:
    """The list index of event ``seq`` (its line number is this plus one)."""
    return next(i for i, r in enumerate(records) if r.get("kind") == "event" and r["seq"] == seq)


def index_of_checkpoint(records: list[Record], tree_size: int) -> int:
    return next(
        i for i, r in enumerate(records) if r.get("kind") == "checkpoint" and r["tree_size"] == tree_size
    )


def rehash(record: Record) -> None:
    record["hash"] = entry_hash(record)


def rechain(records: list[Record], from_seq: int) -> None:
    """What an attacker does after an edit: recompute every later ``prev_hash`` and ``hash``."""
    head = GENESIS_HASH
    for record in records:
        if record.get("kind") != "event":
            continue
        if record["seq"] >= from_seq:
            record["prev_hash"] = head
            rehash(record)
        head = record["hash"]


def assert_failure(report: Report, line: int, seq: int | None, event: str | None, reason: str) -> None:
    assert not report.ok
    assert report.failure is not None
    assert (report.failure.line, report.failure.seq, report.failure.event_id) == (line, seq, event), str(
        report.failure
    )
    assert reason in report.failure.reason, report.failure.reason


# --- Entry hashes and checkpoints -------------------------------------------------------------------------


def test_entry_hash_is_sha256_of_the_canonical_entry_fields() -> None:
    entry = make_entry(3, "ab" * 32)
    assert set(entry) == set(ENTRY_FIELDS)
    assert entry_hash(entry) == hashlib.sha256(canonical(entry)).hexdigest()


def test_entry_hash_covers_every_field() -> None:
    entry = make_entry(3, "ab" * 32)
    original = entry_hash(entry)
    for name in ENTRY_FIELDS:
        changed = {**entry, name: "something else"}
        assert entry_hash(changed) != original, name
    # A nested change too.
    assert entry_hash({**entry, "data": {**entry["data"], "n": 4}}) != original


def test_entry_hash_ignores_fields_outside_the_entry() -> None:
    entry = make_entry(3, "ab" * 32)
    original = entry_hash(entry)
    assert entry_hash({**entry, "kind": "event", "hash": "x", "extra": 1}) == original
    # A missing field hashes as null.
    assert entry_hash({**entry, "span_id": None}) == entry_hash(
        {k: v for k, v in entry.items() if k != "span_id"}
    )


def test_entry_leaf_is_the_merkle_leaf_of_the_raw_hash() -> None:
    h = entry_hash(make_entry(1, GENESIS_HASH))
    assert entry_leaf(h) == leaf_hash(bytes.fromhex(h))


def test_checkpoint_payload_and_signature() -> None:
    payload = checkpoint_payload(TENANT, 5, "aa" * 32, "bb" * 32, "2025-03-01T00:00:00Z", SIGNER.key_id)
    assert tuple(payload) == CHECKPOINT_FIELDS
    assert payload["type"] == CHECKPOINT_TYPE
    signed = sign_checkpoint(SIGNER, payload)
    assert {k: v for k, v in signed.items() if k != "signature"} == payload
    assert verify_checkpoint(signed, KEYS) is None
    # Extra fields (such as an export's "kind") are not part of the signed payload.
    assert verify_checkpoint({**signed, "kind": "checkpoint"}, KEYS) is None


def test_verify_checkpoint_failures() -> None:
    payload = checkpoint_payload(TENANT, 5, "aa" * 32, "bb" * 32, "2025-03-01T00:00:00Z", SIGNER.key_id)
    signed = sign_checkpoint(SIGNER, payload)
    assert verify_checkpoint(signed, {}) == f"checkpoint signed by unknown key {SIGNER.key_id!r}"
    assert verify_checkpoint(signed, {ATTACKER.key_id: ATTACKER.public_key}) is not None
    # The right key id naming the wrong key.
    assert (
        verify_checkpoint(signed, {SIGNER.key_id: ATTACKER.public_key}) == "checkpoint signature is invalid"
    )
    for name in CHECKPOINT_FIELDS:
        if name in ("key_id", "type"):
            continue
        assert verify_checkpoint({**signed, name: "changed"}, KEYS) == "checkpoint signature is invalid", name
    assert verify_checkpoint({**signed, "signature": "garbage"}, KEYS) == "checkpoint signature is invalid"
    no_signature = {k: v for k, v in signed.items() if k != "signature"}
    assert verify_checkpoint(no_signature, KEYS) == "checkpoint signature is invalid"
    # Another type, even validly signed, is not a checkpoint.
    other_type = sign_checkpoint(SIGNER, {**payload, "type": "aigos.killswitch.v1"})
    assert verify_checkpoint(other_type, KEYS) == f"not a checkpoint of type {CHECKPOINT_TYPE}"


# --- Valid exports ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_events", "every"),
    [(0, 0), (0, 3), (1, 1), (1, 0), (7, 0), (10, 4), (10, 5), (12, 3), (33, 8), (64, 16)],
)
def test_valid_export_verifies(n_events: int, every: int) -> None:
    lines = build_export(n_events, every, SIGNER)
    sealed = (n_events // every) * every if every else 0
    for variant in (lines, [line.decode() for line in lines], [line + b"\n" for line in lines]):
        report = verify_export(variant)
        assert report.ok, report.failure
        assert report.tenant_id == TENANT
        assert report.entries == n_events
        assert report.first_seq == (1 if n_events else None)
        assert report.last_seq == (n_events or None)
        assert report.checkpoints == (n_events // every if every else 0)
        assert report.sealed_through == sealed
        assert report.unsealed == n_events - sealed
        assert report.key_ids == [SIGNER.key_id]
    assert verify_export(lines, trusted_keys=KEYS).ok


def test_valid_export_from_a_generator_of_str_lines_with_blank_lines() -> None:
    text = "\n".join(line.decode() for line in build_export(9, 4, SIGNER)) + "\n\n   \n"
    text = text.replace("\n", "\n\n", 2)  # blank lines in the middle are skipped too
    report = verify_export(line for line in text.splitlines(keepends=True))
    assert report.ok, report.failure
    assert (report.entries, report.checkpoints, report.sealed_through, report.unsealed) == (9, 2, 8, 1)


def test_checkpoint_of_the_empty_log() -> None:
    records = [header_record([SIGNER]), checkpoint_record(SIGNER, 0, EMPTY_ROOT, GENESIS_HASH)]
    report = verify_export(dump(records))
    assert report.ok, report.failure
    assert (report.entries, report.checkpoints, report.sealed_through, report.unsealed) == (0, 1, 0, 0)


def test_header_may_list_several_keys() -> None:
    records = build_records(8, 4, SIGNER)
    records[0] = header_record([ATTACKER, SIGNER])
    report = verify_export(dump(records))
    assert report.ok, report.failure
    assert report.key_ids == sorted([SIGNER.key_id, ATTACKER.key_id])


def test_str_lines_with_crlf() -> None:
    lines = [line.decode() + "\r\n" for line in build_export(5, 2, SIGNER)]
    assert verify_export(lines).ok


# --- Tampering with entries -------------------------------------------------------------------------------

N, EVERY = 10, 4  # checkpoints after entries 4 and 8; entries 9 and 10 are unsealed


@pytest.mark.parametrize("seq", range(1, N + 1))
def test_edited_data_is_caught_at_that_entry(seq: int) -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_event(records, seq)
    records[i]["data"]["n"] = 999
    assert_failure(verify_export(dump(records)), i + 1, seq, event_id(seq), "content does not match its hash")


@pytest.mark.parametrize("field", [f for f in ENTRY_FIELDS if f not in ("seq", "tenant_id", "prev_hash")])
def test_every_edited_field_is_caught(field: str) -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_event(records, 6)
    records[i][field] = "tampered"
    # The failure names the entry by its (possibly edited) event id.
    expected_event_id = "tampered" if field == "event_id" else event_id(6)
    assert_failure(verify_export(dump(records)), i + 1, 6, expected_event_id, "was altered")


@pytest.mark.parametrize("seq", range(1, N + 1))
def test_edited_entry_with_recomputed_hash_breaks_the_chain_after_it(seq: int) -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_event(records, seq)
    records[i]["outcome"] = "allowed" if records[i]["outcome"] == "denied" else "denied"
    rehash(records[i])
    report = verify_export(dump(records))
    nxt = records[i + 1] if i + 1 < len(records) else None
    if nxt is None:
        # The last, unsealed entry: nothing commits to its hash yet. Only `unsealed` tells.
        assert report.ok
        assert report.unsealed == N % EVERY
    elif nxt["kind"] == "checkpoint":
        assert_failure(report, i + 2, seq, None, "checkpoint head differs from the chain")
    else:
        assert_failure(report, i + 2, seq + 1, event_id(seq + 1), "prev_hash does not match")


@pytest.mark.parametrize("seq", range(1, N + 1))
def test_fully_rewritten_chain_is_caught_by_the_next_checkpoint(seq: int) -> None:
    records = build_records(N, EVERY, SIGNER)
    records[index_of_event(records, seq)]["data"]["note"] = "rewritten history"
    rechain(records, seq)
    report = verify_export(dump(records))
    sealing = -(-seq // EVERY) * EVERY  # the first checkpoint at or after seq
    if sealing > N:
        # Past the last checkpoint a rewrite is indistinguishable from the truth, but it is reported unsealed.
        assert report.ok
        assert report.sealed_through == (N // EVERY) * EVERY
        assert report.unsealed == N - report.sealed_through
    else:
        line = index_of_checkpoint(records, sealing) + 1
        assert_failure(
            report, line, sealing, None, "checkpoint head differs from the chain: the log was rewritten"
        )


def test_rewritten_chain_with_rewritten_checkpoints_fails_their_signature() -> None:
    records = build_records(N, EVERY, SIGNER)
    records[index_of_event(records, 2)]["data"]["n"] = -2
    rechain(records, 2)
    compact, head = CompactRange(), GENESIS_HASH
    for record in records[1:]:
        if record["kind"] == "event":
            head = record["hash"]
            compact.append(entry_leaf(head))
        else:
            record["head_hash"], record["root_hash"] = head, compact.root().hex()
    line = index_of_checkpoint(records, 4) + 1
    assert_failure(verify_export(dump(records)), line, 4, None, "checkpoint signature is invalid")


def test_rewritten_log_resigned_by_another_key_needs_pinned_keys_to_be_caught() -> None:
    records = build_records(N, EVERY, SIGNER)
    records[index_of_event(records, 2)]["data"]["n"] = -2
    rechain(records, 2)
    compact, head = CompactRange(), GENESIS_HASH
    for j, record in enumerate(records):
        if record["kind"] == "event":
            head = record["hash"]
            compact.append(entry_leaf(head))
        elif record["kind"] == "checkpoint":
            records[j] = checkpoint_record(ATTACKER, record["tree_size"], compact.root(), head)
    # Keeping the server's key in the header: the forged checkpoints name a key it does not list.
    line = index_of_checkpoint(records, 4) + 1
    assert_failure(verify_export(dump(records)), line, 4, None, "checkpoint signed by unknown key")
    # Swapping the header's key for the attacker's: self-consistent, so only pinning catches it.
    records[0] = header_record([ATTACKER])
    assert verify_export(dump(records)).ok
    pinned = verify_export(dump(records), trusted_keys=KEYS)
    assert_failure(pinned, line, 4, None, f"checkpoint signed by unknown key {ATTACKER.key_id!r}")
    assert pinned.key_ids == [SIGNER.key_id]


@pytest.mark.parametrize("seq", range(1, N + 1))
def test_deleted_entry_is_caught_at_the_next_record(seq: int) -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_event(records, seq)
    del records[i]
    report = verify_export(dump(records))
    nxt = records[i] if i < len(records) else None
    if nxt is None:
        # Deleting the last, unsealed entry is a truncation: undetectable from the export alone.
        assert report.ok
        assert report.last_seq == N - 1
    elif nxt["kind"] == "checkpoint":
        assert_failure(
            report,
            i + 1,
            (seq - 1) or None,
            None,
            f"checkpoint for tree size {seq} found after entry {seq - 1}",
        )
    else:
        assert_failure(report, i + 1, seq + 1, event_id(seq + 1), f"expected seq {seq}, found {seq + 1}")


@pytest.mark.parametrize("seq", [1, 2, 5, 6, 9])
def test_swapped_entries_are_caught_at_the_first_out_of_place(seq: int) -> None:
    records = build_records(N, EVERY, SIGNER)
    i, j = index_of_event(records, seq), index_of_event(records, seq + 1)
    assert j == i + 1  # adjacent, no checkpoint between
    records[i], records[j] = records[j], records[i]
    assert_failure(verify_export(dump(records)), i + 1, seq + 1, event_id(seq + 1), f"expected seq {seq}")


def test_swapped_entries_across_a_checkpoint() -> None:
    records = build_records(N, EVERY, SIGNER)
    i, j = index_of_event(records, 4), index_of_event(records, 5)
    records[i], records[j] = records[j], records[i]
    assert_failure(verify_export(dump(records)), i + 1, 5, event_id(5), "expected seq 4, found 5")


@pytest.mark.parametrize("seq", range(1, N + 1))
def test_duplicated_entry_is_caught_at_the_copy(seq: int) -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_event(records, seq)
    records.insert(i + 1, dict(records[i]))
    assert_failure(
        verify_export(dump(records)), i + 2, seq, event_id(seq), f"expected seq {seq + 1}, found {seq}"
    )


def test_inserted_forged_entry_is_caught() -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_event(records, 5)
    entry = make_entry(6, records[i]["hash"])
    entry["data"] = {"forged": True}
    forged = event_record(entry)
    records.insert(i + 1, forged)
    # The forgery itself is consistent; the real entry 6 after it is not.
    assert_failure(verify_export(dump(records)), i + 3, 6, event_id(6), "expected seq 7, found 6")


def test_entry_of_another_tenant() -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_event(records, 3)
    records[i]["tenant_id"] = "tenant-other"
    rehash(records[i])
    assert_failure(verify_export(dump(records)), i + 1, 3, event_id(3), "entry belongs to another tenant")


def test_header_of_another_tenant() -> None:
    records = build_records(N, EVERY, SIGNER)
    records[0]["tenant_id"] = "tenant-other"
    assert_failure(verify_export(dump(records)), 2, 1, event_id(1), "entry belongs to another tenant")


def test_first_entry_must_chain_from_genesis() -> None:
    records = build_records(N, EVERY, SIGNER)
    records[1]["prev_hash"] = "11" * 32
    rehash(records[1])
    assert_failure(verify_export(dump(records)), 2, 1, event_id(1), "prev_hash does not match")


@pytest.mark.parametrize("bad_seq", ["1", None, 0, -1, 1.5])
def test_entry_with_a_malformed_seq(bad_seq: Any) -> None:
    records = build_records(N, EVERY, SIGNER)
    records[1]["seq"] = bad_seq
    expected_seq = bad_seq if isinstance(bad_seq, int) else None
    assert_failure(verify_export(dump(records)), 2, expected_seq, event_id(1), "expected seq 1")


# --- Truncation and checkpoints ---------------------------------------------------------------------------


def test_truncated_after_a_checkpoint_is_undetectable_but_reported_as_sealed_through() -> None:
    records = build_records(N, EVERY, SIGNER)
    cut = index_of_checkpoint(records, 8) + 1
    report = verify_export(dump(records[:cut]))
    assert report.ok
    assert (report.entries, report.last_seq, report.sealed_through, report.unsealed) == (8, 8, 8, 0)


def test_truncated_unsealed_tail_is_undetectable_but_reported_unsealed() -> None:
    records = build_records(N, EVERY, SIGNER)
    report = verify_export(dump(records[:-1]))
    assert report.ok
    assert (report.entries, report.sealed_through, report.unsealed) == (9, 8, 1)


def test_entries_missing_before_a_checkpoint_are_caught_at_the_checkpoint() -> None:
    records = build_records(12, EVERY, SIGNER)
    start, end = index_of_event(records, 9), index_of_event(records, 12)
    del records[start : end + 1]  # entries 9..12 gone, their checkpoint (tree size 12) kept
    assert records[start]["kind"] == "checkpoint"
    assert_failure(
        verify_export(dump(records)),
        start + 1,
        8,
        None,
        "checkpoint for tree size 12 found after entry 8: entries are missing",
    )


def test_deleted_checkpoint_is_only_visible_in_the_counts() -> None:
    records = build_records(N, EVERY, SIGNER)
    del records[index_of_checkpoint(records, 8)]
    report = verify_export(dump(records))
    assert report.ok
    assert (report.checkpoints, report.sealed_through, report.unsealed) == (1, 4, 6)


def test_duplicated_checkpoint_is_harmless() -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_checkpoint(records, 4)
    records.insert(i + 1, dict(records[i]))
    report = verify_export(dump(records))
    assert report.ok
    assert (report.checkpoints, report.sealed_through) == (3, 8)


@pytest.mark.parametrize("offset", [-1, 1])
def test_misplaced_checkpoint(offset: int) -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_checkpoint(records, 4)
    checkpoint = records.pop(i)
    records.insert(i + offset, checkpoint)
    seq_before = 3 if offset < 0 else 5
    assert_failure(
        verify_export(dump(records)),
        i + offset + 1,
        seq_before,
        None,
        f"checkpoint for tree size 4 found after entry {seq_before}",
    )


def test_checkpoint_signed_by_an_unknown_key() -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_checkpoint(records, 4)
    cp = records[i]
    records[i] = checkpoint_record(ATTACKER, 4, bytes.fromhex(cp["root_hash"]), cp["head_hash"])
    assert_failure(
        verify_export(dump(records)), i + 1, 4, None, f"checkpoint signed by unknown key {ATTACKER.key_id!r}"
    )


@pytest.mark.parametrize(
    "tamper",
    [
        lambda cp: cp.update(signature=cp["signature"][:-4] + "AAAA"),
        lambda cp: cp.update(signature=""),
        lambda cp: cp.pop("signature"),
        lambda cp: cp.update(issued_at="2030-01-01T00:00:00Z"),
    ],
    ids=["altered", "empty", "missing", "signed-field-edited"],
)
def test_checkpoint_with_a_bad_signature(tamper: Callable[[Record], None]) -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_checkpoint(records, 8)
    tamper(records[i])
    assert_failure(verify_export(dump(records)), i + 1, 8, None, "checkpoint signature is invalid")


def test_checkpoint_claiming_the_signers_key_id_with_another_key() -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_checkpoint(records, 4)
    cp = records[i]
    records[i] = checkpoint_record(
        ATTACKER, 4, bytes.fromhex(cp["root_hash"]), cp["head_hash"], key_id=SIGNER.key_id
    )
    assert_failure(verify_export(dump(records)), i + 1, 4, None, "checkpoint signature is invalid")


def test_checkpoint_with_a_wrong_root_but_the_right_head() -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_checkpoint(records, 4)
    records[i] = checkpoint_record(SIGNER, 4, EMPTY_ROOT, records[i]["head_hash"])
    assert_failure(
        verify_export(dump(records)),
        i + 1,
        4,
        None,
        "checkpoint root differs from the entries: the log was rewritten",
    )


def test_checkpoint_of_another_tenant() -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_checkpoint(records, 4)
    cp = records[i]
    records[i] = checkpoint_record(
        SIGNER, 4, bytes.fromhex(cp["root_hash"]), cp["head_hash"], tenant="tenant-other"
    )
    assert_failure(verify_export(dump(records)), i + 1, 4, None, "checkpoint belongs to another tenant")


def test_checkpoint_of_another_type() -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_checkpoint(records, 4)
    payload = {name: records[i][name] for name in CHECKPOINT_FIELDS} | {"type": "aigos.other.v1"}
    records[i] = {"kind": "checkpoint", **sign_checkpoint(SIGNER, payload)}
    assert_failure(
        verify_export(dump(records)), i + 1, 4, None, f"not a checkpoint of type {CHECKPOINT_TYPE}"
    )


# --- Keys -------------------------------------------------------------------------------------------------


def test_trusted_keys_pin_rejects_header_keys() -> None:
    lines = build_export(N, EVERY, SIGNER)
    other = {ATTACKER.key_id: ATTACKER.public_key}
    report = verify_export(lines, trusted_keys=other)
    line = index_of_checkpoint(load(lines), 4) + 1
    assert_failure(report, line, 4, None, f"checkpoint signed by unknown key {SIGNER.key_id!r}")
    assert report.key_ids == [ATTACKER.key_id]
    # The pinned key id bound to the wrong public key.
    report = verify_export(lines, trusted_keys={SIGNER.key_id: ATTACKER.public_key})
    assert_failure(report, line, 4, None, "checkpoint signature is invalid")


def test_trusted_keys_pin_accepts_the_real_key() -> None:
    report = verify_export(build_export(N, EVERY, SIGNER), trusted_keys={**KEYS, "0" * 16: b"\x00" * 32})
    assert report.ok
    assert report.key_ids == sorted([SIGNER.key_id, "0" * 16])


def test_trusted_keys_pin_cannot_help_an_export_without_checkpoints() -> None:
    report = verify_export(build_export(N, 0, SIGNER), trusted_keys={ATTACKER.key_id: ATTACKER.public_key})
    assert report.ok
    assert (report.checkpoints, report.sealed_through, report.unsealed) == (0, 0, N)


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        (
            [{"key_id": "0" * 16, "public_key": b64url(SIGNER.public_key)}],
            "key id does not match its public key",
        ),
        ([{"key_id": SIGNER.key_id}], "malformed key"),
        ([{"public_key": b64url(SIGNER.public_key)}], "key id does not match its public key"),
        ([{"key_id": SIGNER.key_id, "public_key": "a"}], "malformed key"),
        (["just-a-string"], "malformed key"),
    ],
)
def test_malformed_header_keys(keys: list[Any], reason: str) -> None:
    records = build_records(N, EVERY, SIGNER)
    records[0]["keys"] = keys
    assert_failure(verify_export(dump(records)), 1, None, None, reason)


# --- Anchored (pruned-prefix) exports ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "every"), [(0, 4), (1, 4), (6, 4), (8, 4), (13, 4), (19, 4), (20, 4), (7, 3)]
)
def test_anchored_export_verifies(anchor: int, every: int) -> None:
    n = 20
    records = build_records(n, every, SIGNER, anchor=anchor)
    assert records[0]["anchor"]["seq"] == anchor
    report = verify_export(dump(records))
    assert report.ok, report.failure
    assert report.entries == n - anchor
    assert report.first_seq == (anchor + 1 if anchor < n else None)
    assert report.last_seq == (n if anchor < n else None)
    assert report.checkpoints == n // every - anchor // every
    sealed = (n // every) * every if report.checkpoints else 0
    assert report.sealed_through == sealed
    if report.checkpoints:
        assert report.unsealed == n - sealed


def test_anchored_export_with_a_wrong_head() -> None:
    records = build_records(20, 4, SIGNER, anchor=6)
    records[0]["anchor"]["head_hash"] = "22" * 32
    assert_failure(verify_export(dump(records)), 2, 7, event_id(7), "prev_hash does not match")


def test_anchored_export_with_a_wrong_compact_range_is_caught_by_the_root() -> None:
    records = build_records(20, 4, SIGNER, anchor=6)
    nodes = records[0]["anchor"]["compact_range"]["nodes"]
    nodes[0] = "33" * 32
    line = index_of_checkpoint(records, 8) + 1
    assert_failure(verify_export(dump(records)), line, 8, None, "checkpoint root differs from the entries")


def test_anchor_whose_compact_range_size_differs_from_its_seq() -> None:
    records = build_records(20, 4, SIGNER, anchor=6)
    records[0]["anchor"]["seq"] = 7
    assert_failure(
        verify_export(dump(records)), 1, None, None, "anchor: compact range size differs from its seq"
    )


def test_anchored_export_with_entries_before_the_anchor() -> None:
    records = build_records(20, 4, SIGNER, anchor=6)
    full = build_records(20, 4, SIGNER)
    records.insert(1, full[index_of_event(full, 6)])
    assert_failure(verify_export(dump(records)), 2, 6, event_id(6), "expected seq 7, found 6")


MALFORMED_ANCHORS: list[Any] = [
    {"seq": 1, "head_hash": GENESIS_HASH, "compact_range": {"size": 1, "nodes": []}},
    {"seq": 1, "head_hash": GENESIS_HASH, "compact_range": {"size": 1, "nodes": ["zz"]}},
    {"seq": 1, "head_hash": GENESIS_HASH},
    {"seq": "one", "head_hash": GENESIS_HASH, "compact_range": {"size": 0, "nodes": []}},
    "not an object",
]


@pytest.mark.parametrize("anchor", MALFORMED_ANCHORS)
def test_malformed_anchor_is_a_failure_not_an_exception(anchor: Any) -> None:
    records = build_records(4, 2, SIGNER)
    records[0]["anchor"] = anchor
    report = verify_export(dump(records))
    assert report.failure is not None
    assert report.failure.line == 1


def test_non_list_header_keys_is_a_failure_not_an_exception() -> None:
    records = build_records(4, 2, SIGNER)
    records[0]["keys"] = 5
    report = verify_export(dump(records))
    assert report.failure is not None
    assert report.failure.line == 1


# --- Malformed input --------------------------------------------------------------------------------------


def test_empty_input() -> None:
    report = verify_export([])
    assert_failure(report, 1, None, None, "empty export")
    assert report.tenant_id is None
    assert report.entries == 0


def test_only_blank_lines() -> None:
    assert_failure(verify_export([b"", b"   \n", "\n"]), 4, None, None, "empty export")


def test_missing_header() -> None:
    lines = build_export(N, EVERY, SIGNER)
    assert_failure(verify_export(lines[1:]), 1, None, None, f"expected a {EXPORT_FORMAT} header")


@pytest.mark.parametrize(
    "header",
    [
        {"kind": "header", "format": "aigos.audit.export.v2", "tenant_id": TENANT, "keys": []},
        {"kind": "event", "format": EXPORT_FORMAT, "tenant_id": TENANT, "keys": []},
        {"format": EXPORT_FORMAT, "tenant_id": TENANT, "keys": []},
    ],
)
def test_wrong_header(header: Record) -> None:
    lines = build_export(N, EVERY, SIGNER)
    lines[0] = orjson.dumps(header)
    assert_failure(verify_export(lines), 1, None, None, "header")


@pytest.mark.parametrize("position", [1, 3, 6])
@pytest.mark.parametrize("garbage", [b"{not json", b'{"kind": "event",', b"\xff\xfe", "{'single': 1}"])
def test_malformed_json_line(position: int, garbage: bytes | str) -> None:
    lines: list[bytes | str] = list(build_export(N, EVERY, SIGNER))
    lines.insert(position, garbage)
    report = verify_export(lines)
    assert_failure(report, position + 1, None, None, "not JSON")


@pytest.mark.parametrize("line", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_json_line_that_is_not_an_object(line: bytes) -> None:
    lines = build_export(N, EVERY, SIGNER)
    lines.insert(2, line)
    assert_failure(verify_export(lines), 3, None, None, "not a JSON object")


@pytest.mark.parametrize("kind", ["header", "note", None])
def test_unknown_record_kind(kind: str | None) -> None:
    records = build_records(N, EVERY, SIGNER)
    records.insert(3, {"kind": kind, "format": EXPORT_FORMAT})
    assert_failure(verify_export(dump(records)), 4, None, None, f"unknown record kind {kind!r}")


def test_header_alone_is_an_empty_but_valid_log() -> None:
    report = verify_export(build_export(0, 0, SIGNER))
    assert report.ok
    assert (report.entries, report.first_seq, report.last_seq, report.unsealed) == (0, None, None, 0)


# --- Report and Failure -----------------------------------------------------------------------------------


def test_report_to_json_when_ok() -> None:
    report = verify_export(build_export(N, EVERY, SIGNER))
    assert report.to_json() == {
        "ok": True,
        "tenant_id": TENANT,
        "entries": N,
        "first_seq": 1,
        "last_seq": N,
        "checkpoints": 2,
        "sealed_through": 8,
        "unsealed": 2,
        "key_ids": [SIGNER.key_id],
        "losses": [],
        "lost": 0,
        "failure": None,
    }
    canonical(report.to_json())  # JSON-serialisable as is


def test_report_to_json_with_a_failure() -> None:
    records = build_records(N, EVERY, SIGNER)
    i = index_of_event(records, 6)
    records[i]["data"] = {}
    as_json = verify_export(dump(records)).to_json()
    assert as_json["ok"] is False
    assert as_json["entries"] == 5
    assert as_json["last_seq"] == 5
    assert as_json["checkpoints"] == 1
    assert as_json["failure"] == {
        "line": i + 1,
        "seq": 6,
        "event_id": event_id(6),
        "reason": "content does not match its hash: the entry was altered",
    }
    canonical(as_json)


def test_report_defaults() -> None:
    report = Report()
    assert report.ok
    assert report.to_json()["failure"] is None
    report.failure = Failure(1, "x")
    assert not report.ok


def test_failure_str() -> None:
    assert str(Failure(7, "content does not match its hash", 6, "evt-0006")) == (
        "line 7: entry seq=6 event_id=evt-0006: content does not match its hash"
    )
    assert str(Failure(1, "empty export")) == "line 1: export: empty export"
    assert (
        str(Failure(3, "checkpoint head differs", 4))
        == "line 3: entry seq=4 event_id=None: checkpoint head differs"
    )


# --- Incremental verification and memory ---------------------------------------------------------------


def stream_export(n_events: int, checkpoint_every: int) -> Iterator[bytes]:
    """``build_export``'s lines, produced one at a time and never held: what reading a large file gives."""
    compact = CompactRange()
    head = GENESIS_HASH
    yield orjson.dumps(header_record([SIGNER]))
    for seq in range(1, n_events + 1):
        record = event_record(make_entry(seq, head))
        head = record["hash"]
        compact.append(entry_leaf(head))
        yield orjson.dumps(record)
        if checkpoint_every and seq % checkpoint_every == 0:
            yield orjson.dumps(checkpoint_record(SIGNER, seq, compact.root(), head))


def tampered_exports() -> list[list[bytes]]:
    """A valid export and a few broken ones: an edit, a deletion, a rewritten chain, a bad line."""
    records = build_records(40, 7, SIGNER)
    edited = load(dump(records))
    edited[index_of_event(edited, 9)]["data"] = {"n": 0}
    deleted = load(dump(records))
    del deleted[index_of_event(deleted, 20)]
    rewritten = load(dump(records))
    rewritten[index_of_event(rewritten, 30)]["data"] = {"n": 0}
    rechain(rewritten, 30)
    garbage = [*dump(records)[:12], b"{not json", *dump(records)[12:]]
    return [dump(records), dump(edited), dump(deleted), dump(rewritten), garbage]


@settings(max_examples=100, deadline=None, database=None)
@given(
    which=st.integers(min_value=0, max_value=4),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8),
)
def test_feeding_in_any_pieces_gives_the_report_of_the_whole(which: int, cuts: list[int]) -> None:
    lines = tampered_exports()[which]
    whole = verify_export(lines)
    verifier = ExportVerifier()
    bounds = [0, *sorted(min(cut, len(lines)) for cut in cuts), len(lines)]
    for lo, hi in itertools.pairwise(bounds):
        if hi - lo == 1:
            verifier.feed(lines[lo])
        else:
            verifier.feed_many(lines[lo:hi])
    assert verifier.finish().to_json() == whole.to_json()
    assert whole.ok == (which == 0)


def test_a_failed_verifier_ignores_what_follows() -> None:
    lines = build_export(N, EVERY, SIGNER)
    verifier = ExportVerifier()
    assert verifier.feed_many(lines[:3])
    assert not verifier.feed(b"{not json")
    assert verifier.failed
    assert not verifier.feed_many(lines[3:])
    assert verifier.lines == 4
    assert_failure(verifier.finish(), 4, None, None, "not JSON")


def test_an_anchor_then_entries_fed_one_by_one() -> None:
    verifier = ExportVerifier(KEYS)
    for line in build_export(20, 6, SIGNER, anchor=9):
        assert verifier.feed(line)
    report = verifier.finish()
    assert report.ok, report.failure
    assert (report.first_seq, report.last_seq, report.checkpoints, report.unsealed) == (10, 20, 2, 2)


def test_a_line_longer_than_the_limit_fails_at_that_line() -> None:
    lines = build_export(N, EVERY, SIGNER)
    longest = max(len(line) for line in lines)
    assert verify_export(lines, max_line_bytes=longest).ok
    records = load(lines)
    records[3]["data"] = {"blob": "x" * longest}
    report = verify_export(dump(records), max_line_bytes=longest)
    assert_failure(report, 4, None, None, f"line longer than {longest} bytes")


def test_the_default_line_limit_is_far_above_any_accepted_request_body() -> None:
    assert MAX_LINE_BYTES >= 64 * 1_048_576


def _peak_bytes_verifying(n_events: int) -> int:
    """The peak of the allocations ``verify_export`` makes on an export of ``n_events`` entries.

    The lines are built before tracing starts, so only what verification allocates (and keeps) counts.
    """
    lines = list(stream_export(n_events, 1_000))
    tracemalloc.start()
    try:
        report = verify_export(lines)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok, report.failure
    assert report.entries == n_events
    return peak


def test_memory_does_not_grow_with_the_export() -> None:
    """Four times the entries, the same peak: nothing per entry is kept (the compact range grows by a
    node or two, the counters by nothing)."""
    small = _peak_bytes_verifying(10_000)
    large = _peak_bytes_verifying(40_000)
    assert large < small + 4_096, (small, large)
