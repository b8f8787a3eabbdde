"""The tamper-evident event log's mathematics: entry hashes, the chain, checkpoints, and verification.

Each tenant's log is a sequence ``1, 2, 3, ...`` of entries. An entry's ``hash`` is the SHA-256 of the
canonical JSON of all its fields (``prev_hash`` included, ``hash`` excluded), so each entry commits to
the whole history before it. The entry hashes are also the leaves of an RFC 9162 Merkle tree; a
checkpoint signs the tree head (``tree_size``, ``root_hash``) and the chain head (``head_hash``).
Editing, deleting, inserting or reordering any entry changes a hash the next entry or a signed
checkpoint commits to, and ``verify_export`` names the first entry where that shows. Events that were
acknowledged but never logged are not silent either: the log records them (``LOSS_TYPES``) and the report
lists those records.

This module does no I/O: the server and ``aigos audit verify`` (light install) share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aigos.core import signing
from aigos.core.canonical import canonical, parse
from aigos.core.merkle import CompactRange, leaf_hash

GENESIS_HASH = "0" * 64
EXPORT_FORMAT = "aigos.audit.export.v1"
CHECKPOINT_TYPE = "aigos.audit.checkpoint.v1"

#: The fields of an entry, all covered by its hash.
ENTRY_FIELDS = (
    "tenant_id",
    "seq",
    "event_id",
    "event_type",
    "agent_id",
    "timestamp",
    "recorded_at",
    "actor",
    "source",
    "outcome",
    "request_id",
    "trace_id",
    "span_id",
    "data",
    "prev_hash",
)
CHECKPOINT_FIELDS = ("type", "tenant_id", "tree_size", "root_hash", "head_hash", "issued_at", "key_id")
#: Entries recording events that were acknowledged and then lost (dropped, or unreadable after a crash).
LOSS_TYPES = frozenset({"audit.events_dropped", "audit.events_lost"})


def entry_hash(entry: Mapping[str, Any]) -> str:
    """The hex hash of an entry: SHA-256 of the canonical JSON of its ``ENTRY_FIELDS``."""
    return fields_hash({name: entry.get(name) for name in ENTRY_FIELDS})


def fields_hash(fields: Mapping[str, Any]) -> str:
    """``entry_hash`` of a mapping holding exactly the ``ENTRY_FIELDS`` (as the appender builds them)."""
    # Entries are built from JSON-ready values (the appender canonicalises ``data`` with the check first).
    return hashlib.sha256(canonical(fields, check_finite=False)).hexdigest()


def entry_leaf(hash_hex: str) -> bytes:
    """The Merkle leaf hash of an entry, from its entry hash."""
    return leaf_hash(bytes.fromhex(hash_hex))


def checkpoint_payload(
    tenant_id: str, tree_size: int, root_hash: str, head_hash: str, issued_at: str, key_id: str
) -> dict[str, Any]:
    """The signed content of a checkpoint."""
    return {
        "type": CHECKPOINT_TYPE,
        "tenant_id": tenant_id,
        "tree_size": tree_size,
        "root_hash": root_hash,
        "head_hash": head_hash,
        "issued_at": issued_at,
        "key_id": key_id,
    }


def sign_checkpoint(signer: signing.Signer, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload plus its ``signature``."""
    return {**payload, "signature": signer.sign(payload)}


def verify_checkpoint(checkpoint: Mapping[str, Any], keys: Mapping[str, bytes]) -> str | None:
    """None if the checkpoint's signature is valid under one of ``keys`` (by key id), else why not."""
    key = keys.get(str(checkpoint.get("key_id")))
    if key is None:
        return f"checkpoint signed by unknown key {checkpoint.get('key_id')!r}"
    payload = {name: checkpoint.get(name) for name in CHECKPOINT_FIELDS}
    if payload["type"] != CHECKPOINT_TYPE:
        return f"not a checkpoint of type {CHECKPOINT_TYPE}"
    if not signing.verify(key, payload, str(checkpoint.get("signature", ""))):
        return "checkpoint signature is invalid"
    return None


@dataclass
class Failure:
    """Where verification failed: the line, and the entry (sequence number, event id) when there is one."""

    line: int
    reason: str
    seq: int | None = None
    event_id: str | None = None

    def __str__(self) -> str:
        where = f"entry seq={self.seq} event_id={self.event_id}" if self.seq is not None else "export"
        return f"line {self.line}: {where}: {self.reason}"


@dataclass
class Report:
    """The outcome of verifying an export."""

    tenant_id: str | None = None
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    sealed_through: int = 0
    unsealed: int = 0
    key_ids: list[str] = field(default_factory=list)
    failure: Failure | None = None
    #: The loss records met: seq, event type, and the record's data (``count``, ``reason``, times...).
    losses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether everything verified."""
        return self.failure is None

    @property
    def lost(self) -> int:
        """Events the loss records count (at least: an unreadable journal line may have held several)."""
        return sum(loss["count"] for loss in self.losses if isinstance(loss.get("count"), int))

    def to_json(self) -> dict[str, Any]:
        """A JSON form for the API and the CLI's ``--json``."""
        return {
            "ok": self.ok,
            "tenant_id": self.tenant_id,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "checkpoints": self.checkpoints,
            "sealed_through": self.sealed_through,
            "unsealed": self.unsealed,
            "key_ids": self.key_ids,
            "losses": self.losses,
            "lost": self.lost,
            "failure": None
            if self.failure is None
            else {
                "line": self.failure.line,
                "seq": self.failure.seq,
                "event_id": self.failure.event_id,
                "reason": self.failure.reason,
            },
        }


class _Stop(Exception):
    def __init__(self, failure: Failure) -> None:
        self.failure = failure


#: The longest export line the verifier reads: far above any entry a server accepts (its request bodies
#: are limited to ``AIGOS_MAX_BODY_BYTES``, 1 MiB by default), and what bounds the verifier's memory.
MAX_LINE_BYTES = 64 * 1024 * 1024
_ENTRY_FIELD_SET = frozenset(ENTRY_FIELDS)
_sha256 = hashlib.sha256


class ExportVerifier:
    """Verifies an NDJSON export fed to it a line (or a batch of lines) at a time, in constant memory.

    Between lines it holds only the chain head, the sequence number and the Merkle tree's compact range
    (O(log n) subtree roots), never the entries: an export of any length verifies in the same memory,
    and the caller decides how to read it (a file, a socket, database pages) and when to pause. The
    checks and their failures are ``verify_export``'s, which is this class fed from an iterable.

    ``feed`` and ``feed_many`` return False once verification has failed: further lines are ignored.
    ``finish`` says the export ended there and returns the report (a failure if there was no header).
    """

    def __init__(
        self, trusted_keys: Mapping[str, bytes] | None = None, *, max_line_bytes: int = MAX_LINE_BYTES
    ) -> None:
        self.report = Report()
        self._trusted = trusted_keys
        self._max_line = max_line_bytes
        self._keys: Mapping[str, bytes] = {}
        self._compact = CompactRange()
        self._head = GENESIS_HASH
        self._seq = 0
        self._number = 0
        self._header_seen = False

    @property
    def failed(self) -> bool:
        """Whether a line failed verification (the report names it)."""
        return self.report.failure is not None

    @property
    def lines(self) -> int:
        """Lines fed so far, blank ones included."""
        return self._number

    def feed(self, line: bytes | str) -> bool:
        """Check the next line; False once verification has failed."""
        return self.feed_many((line,))

    def feed_many(self, lines: Iterable[bytes | str]) -> bool:
        """Check the next lines in order; False once verification has failed (the rest are not read)."""
        if self.report.failure is not None:
            return False
        try:
            self._feed(lines)
        except _Stop as stop:
            self.report.failure = stop.failure
            return False
        return True

    def finish(self) -> Report:
        """The report, the export having ended after the lines fed."""
        report = self.report
        if report.failure is None:
            if not self._header_seen:
                report.failure = Failure(self._number + 1, "empty export")
            else:
                report.unsealed = (report.last_seq or 0) - report.sealed_through if report.last_seq else 0
        return report

    def _feed(self, lines: Iterable[bytes | str]) -> None:
        # The hot loop, about half of whose time is the interpreter's: state in locals (written back however
        # the loop ends), an entry's checks inline, the slow paths in functions.
        compact, head, seq, number = self._compact, self._head, self._seq, self._number
        report, max_line, tenant = self.report, self._max_line, self.report.tenant_id
        entries = 0
        try:
            for raw in lines:
                number += 1
                if len(raw) > max_line:
                    raise _Stop(Failure(number, f"line longer than {max_line} bytes"))
                try:
                    record = parse(raw)
                except ValueError as exc:
                    if not raw.strip():
                        continue
                    raise _Stop(Failure(number, f"not JSON: {exc}")) from exc
                if not isinstance(record, dict):
                    raise _Stop(Failure(number, "not a JSON object"))
                kind = record.pop("kind", None)
                if kind == "event" and self._header_seen:
                    entry_seq = record.get("seq")
                    if (
                        entry_seq != seq + 1
                        or record.get("tenant_id") != tenant
                        or record.get("prev_hash") != head
                    ):
                        _check_links(record, number, seq, head, tenant)
                    claimed = record.pop("hash", None)
                    # An export line holds exactly the entry's fields besides kind and hash: hash the parsed
                    # object as it is rather than a copy made field by field (the same canonical bytes).
                    if record.keys() != _ENTRY_FIELD_SET:
                        record = {name: record.get(name) for name in ENTRY_FIELDS}
                    digest = _sha256(canonical(record, check_finite=False)).digest()
                    computed = digest.hex()
                    if claimed != computed:
                        reason = "content does not match its hash: the entry was altered"
                        raise _Stop(Failure(number, reason, entry_seq, str(record.get("event_id"))))
                    seq, head = seq + 1, computed
                    entries += 1
                    if report.first_seq is None:
                        report.first_seq = entry_seq
                    if record.get("event_type") in LOSS_TYPES:
                        _record_loss(record, report)
                    compact.append(leaf_hash(digest))
                elif not self._header_seen:
                    self._header(record, kind, number)
                    compact, head, seq, tenant = self._compact, self._head, self._seq, report.tenant_id
                elif kind == "checkpoint":
                    _check_checkpoint(record, number, seq, head, compact, self._keys, report)
                else:
                    raise _Stop(Failure(number, f"unknown record kind {kind!r}"))
        finally:
            self._compact, self._head, self._seq, self._number = compact, head, seq, number
            if entries:
                report.entries += entries
                report.last_seq = seq

    def _header(self, record: dict[str, Any], kind: object, number: int) -> None:
        report = self.report
        if kind != "header" or record.get("format") != EXPORT_FORMAT:
            raise _Stop(Failure(number, f"expected a {EXPORT_FORMAT} header"))
        self._header_seen = True
        report.tenant_id = str(record.get("tenant_id"))
        self._keys = dict(self._trusted) if self._trusted is not None else _header_keys(record, number)
        report.key_ids = sorted(self._keys)
        anchor = record.get("anchor")
        if anchor:
            try:
                compact = CompactRange.from_json(anchor["compact_range"])
                seq, head = int(anchor["seq"]), str(anchor["head_hash"])
            except (KeyError, TypeError, ValueError, AssertionError) as exc:
                raise _Stop(Failure(number, f"header: malformed anchor ({exc})")) from exc
            if compact.size != seq:
                raise _Stop(Failure(number, "anchor: compact range size differs from its seq"))
            self._compact, self._seq, self._head = compact, seq, head


def verify_export(
    lines: Iterable[bytes | str],
    trusted_keys: Mapping[str, bytes] | None = None,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Report:
    """Verify an NDJSON export: header, then entries in order with each checkpoint right after the entry
    at its ``tree_size``.

    ``trusted_keys`` (key id to raw public key) pins the signing keys; without it the keys in the export's
    header are used, which proves integrity against everyone who lacks the server's signing key but not
    against the server itself: pin the keys published at ``/v1/audit/keys`` for that.

    Lines are read one at a time and never kept: memory does not grow with the export (see
    ``ExportVerifier``); a line longer than ``max_line_bytes`` is a failure.
    """
    verifier = ExportVerifier(trusted_keys, max_line_bytes=max_line_bytes)
    verifier.feed_many(lines)
    return verifier.finish()


def _header_keys(header: Mapping[str, Any], number: int) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    listed = header.get("keys") or []
    if not isinstance(listed, list):
        raise _Stop(Failure(number, "header: malformed key list"))
    for entry in listed:
        try:
            raw = signing.unb64url(str(entry["public_key"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise _Stop(Failure(number, "header: malformed key")) from exc
        if signing.key_id(raw) != entry.get("key_id"):
            raise _Stop(Failure(number, "header: key id does not match its public key"))
        keys[str(entry["key_id"])] = raw
    return keys


def _check_links(record: dict[str, Any], number: int, seq: int, head: str, tenant: str | None) -> None:
    """Raise the failure of an entry that does not follow ``seq`` and ``head`` in ``tenant``'s log, if it
    does not (the hot loop's quick comparison also sends here entries whose tenant id is merely spelt as
    another JSON type)."""
    entry_seq = record.get("seq")
    event_id = str(record.get("event_id"))
    if entry_seq != seq + 1:
        reason = f"expected seq {seq + 1}, found {entry_seq}: an entry is missing, duplicated or out of order"
        raise _Stop(Failure(number, reason, entry_seq if isinstance(entry_seq, int) else None, event_id))
    if str(record.get("tenant_id")) != tenant:
        raise _Stop(Failure(number, "entry belongs to another tenant", entry_seq, event_id))
    if record.get("prev_hash") != head:
        reason = "prev_hash does not match the previous entry's hash"
        raise _Stop(Failure(number, reason, entry_seq, event_id))


def _record_loss(record: dict[str, Any], report: Report) -> None:
    """Note an entry recording acknowledged events that were lost."""
    data = record.get("data")
    details = data if isinstance(data, dict) else {}
    report.losses.append({"seq": record.get("seq"), "event_type": record["event_type"], **details})


def _check_checkpoint(
    record: dict[str, Any],
    number: int,
    seq: int,
    head: str,
    compact: CompactRange,
    keys: Mapping[str, bytes],
    report: Report,
) -> None:
    size = record.get("tree_size")
    if size != seq:
        reason = f"checkpoint for tree size {size} found after entry {seq}: entries are missing"
        raise _Stop(Failure(number, reason, seq or None))
    if str(record.get("tenant_id")) != report.tenant_id:
        raise _Stop(Failure(number, "checkpoint belongs to another tenant", seq or None))
    problem = verify_checkpoint(record, keys)
    if problem:
        raise _Stop(Failure(number, problem, seq or None))
    if record.get("head_hash") != head:
        reason = "checkpoint head differs from the chain: the log was rewritten"
        raise _Stop(Failure(number, reason, seq or None))
    if record.get("root_hash") != compact.root().hex():
        reason = "checkpoint root differs from the entries: the log was rewritten"
        raise _Stop(Failure(number, reason, seq or None))
    report.checkpoints += 1
    report.sealed_through = max(report.sealed_through, size)
