"""The AIGRC Golden Thread hash (SPEC-PRT-001): the spec's own vector, its normalisation, both forms.

The expected canonical strings are written out by hand from the spec, and the hashes recomputed here with
``hashlib`` over those strings, so the module is checked against the text of the spec, not against itself.
"""

from __future__ import annotations

import hashlib

import pytest

from aigos.core import goldenthread
from aigos.core.goldenthread import Verification, canonical_string, compute, verify

#: The public example from the spec's own tests.
SPEC_HASH = "sha256:bb085280036c278a6478b90f67d09cfcb6bcc7484d13229d7eba509bdb4685f7"
SPEC_CANONICAL = "approved_at=2025-01-15T10:30:00Z|approved_by=ciso@corp.com|ticket_id=FIN-1234"


def _sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_the_spec_vector() -> None:
    assert compute("FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z") == SPEC_HASH
    assert verify(SPEC_HASH, "FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z") == Verification(
        True, "spec"
    )


def test_the_canonical_string_is_exactly_the_specs() -> None:
    # Keys in ASCII order, "|" between, no trailing separator; the hash is over its UTF-8 bytes.
    assert canonical_string("FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z") == SPEC_CANONICAL
    assert _sha256(SPEC_CANONICAL) == SPEC_HASH


def test_values_are_trimmed() -> None:
    padded = ("  FIN-1234\t", " ciso@corp.com\n", " 2025-01-15T10:30:00Z ")
    assert canonical_string(*padded) == SPEC_CANONICAL
    assert canonical_string(*padded, lower_email=False) == SPEC_CANONICAL
    assert compute(*padded) == SPEC_HASH
    assert verify(SPEC_HASH, *padded) == Verification(True, "spec")


@pytest.mark.parametrize(
    "approved_at",
    [
        "2025-01-15T10:30:00Z",
        "2025-01-15T10:30:00+00:00",
        "2025-01-15T11:30:00+01:00",
        "2025-01-15T05:30:00-05:00",
        "2025-01-14T22:30:00-12:00",  # the day before, locally
        "2025-01-15T16:00:00+05:30",
        "2025-01-15T10:30:00.999Z",  # truncated to the second, not rounded up
        "2025-01-15T10:30:00.999999+00:00",
        "2025-01-15T11:30:00.5+01:00",
    ],
)
def test_timestamps_are_converted_to_utc_and_truncated_to_seconds(approved_at: str) -> None:
    assert canonical_string("FIN-1234", "ciso@corp.com", approved_at) == SPEC_CANONICAL
    assert verify(SPEC_HASH, "FIN-1234", "ciso@corp.com", approved_at) == Verification(True, "spec")


def test_the_year_is_always_four_digits() -> None:
    assert canonical_string("T-1", "a@b.co", "0999-03-04T05:06:07Z") == (
        "approved_at=0999-03-04T05:06:07Z|approved_by=a@b.co|ticket_id=T-1"
    )


def test_an_upper_case_email_matches_in_the_form_its_hash_was_computed_in() -> None:
    args = ("FIN-1234", "CISO@Corp.com", "2025-01-15T10:30:00Z")
    # The spec lower-cases the email: that is the spec vector itself.
    assert compute(*args) == SPEC_HASH
    assert verify(SPEC_HASH, *args) == Verification(True, "spec")
    # The reference implementation keeps it as given: another hash, accepted and reported as such.
    reference = compute(*args, lower_email=False)
    assert canonical_string(*args, lower_email=False) == (
        "approved_at=2025-01-15T10:30:00Z|approved_by=CISO@Corp.com|ticket_id=FIN-1234"
    )
    assert reference == _sha256(
        "approved_at=2025-01-15T10:30:00Z|approved_by=CISO@Corp.com|ticket_id=FIN-1234"
    )
    assert reference != SPEC_HASH
    assert verify(reference, *args) == Verification(True, "reference")


def test_a_lower_case_email_is_reported_in_the_spec_form() -> None:
    # Both forms give the same hash then; the spec's is named.
    assert compute("FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z", lower_email=False) == SPEC_HASH
    assert verify(SPEC_HASH, "FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z").form == "spec"


@pytest.mark.parametrize(
    ("stored", "ticket_id", "approved_by", "approved_at"),
    [
        (SPEC_HASH, "FIN-1235", "ciso@corp.com", "2025-01-15T10:30:00Z"),
        (SPEC_HASH, "FIN-1234", "cfo@corp.com", "2025-01-15T10:30:00Z"),
        (SPEC_HASH, "FIN-1234", "ciso@corp.com", "2025-01-15T10:30:01Z"),
        (SPEC_HASH, "fin-1234", "ciso@corp.com", "2025-01-15T10:30:00Z"),  # the ticket id keeps its case
        (SPEC_HASH.upper(), "FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z"),
        (SPEC_HASH.removeprefix("sha256:"), "FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z"),
        (SPEC_HASH[:-1] + "8", "FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z"),
        ("", "FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z"),
        # Not ASCII: compare_digest refuses such a str, so the comparison is over bytes.
        (SPEC_HASH[:-1] + "é", "FIN-1234", "ciso@corp.com", "2025-01-15T10:30:00Z"),
    ],
)
def test_a_mismatch_is_unverified(stored: str, ticket_id: str, approved_by: str, approved_at: str) -> None:
    assert verify(stored, ticket_id, approved_by, approved_at) == Verification(False, None)


def test_an_unreadable_timestamp_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        goldenthread.compute("FIN-1234", "ciso@corp.com", "15 January 2025")
