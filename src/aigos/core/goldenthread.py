"""The AIGRC Golden Thread (SPEC-PRT-001): the hash linking an AI system to its business approval."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime


def _timestamp(value: str) -> str:
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # isoformat, not strftime: %Y writes the year 999 as "999" on glibc, where the spec wants YYYY.
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def canonical_string(ticket_id: str, approved_by: str, approved_at: str, *, lower_email: bool = True) -> str:
    """``approved_at=<ts>|approved_by=<email>|ticket_id=<id>`` with the spec's normalisation."""
    email = approved_by.strip().lower() if lower_email else approved_by.strip()
    return f"approved_at={_timestamp(approved_at)}|approved_by={email}|ticket_id={ticket_id.strip()}"


def compute(ticket_id: str, approved_by: str, approved_at: str, *, lower_email: bool = True) -> str:
    """``sha256:<hex>`` of the canonical string."""
    text = canonical_string(ticket_id, approved_by, approved_at, lower_email=lower_email)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Verification:
    """Whether a stored hash matches, and which normalisation matched (``spec`` lower-cases the email,
    ``reference`` keeps it as given)."""

    verified: bool
    form: str | None


def verify(stored_hash: str, ticket_id: str, approved_by: str, approved_at: str) -> Verification:
    """Recompute in both accepted forms and compare in constant time."""
    # As bytes: compare_digest raises TypeError on a str with a non-ASCII character, and a stored hash is
    # whatever a caller sent.
    stored = stored_hash.encode()
    for form, lower in (("spec", True), ("reference", False)):
        computed = compute(ticket_id, approved_by, approved_at, lower_email=lower).encode()
        if hmac.compare_digest(computed, stored):
            return Verification(True, form)
    return Verification(False, None)
