"""AIGRC asset cards: parsing (YAML 1.2, the traps of YAML 1.1, hostile input), the schema, the hashes.

The cards under tests/data/aigrc/ are written from the AIGRC spec digest as someone outside the project
would write them; the expected documents and pointers here are spelled out by hand.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from aigos.core import assetcard
from aigos.core.agents import Capabilities
from aigos.core.assetcard import (
    MAX_CARD_BYTES,
    MAX_DEPTH,
    RISK_LEVELS,
    STATUSES,
    TECHNICAL_TYPES,
    CardGoldenThread,
    CardInvalid,
    FieldError,
    parse,
    validate,
    verify_golden_thread,
)
from aigos.core.canonical import canonical
from aigos.core.goldenthread import Verification

DATA = Path(__file__).resolve().parents[1] / "data" / "aigrc"
SPEC_HASH = "sha256:bb085280036c278a6478b90f67d09cfcb6bcc7484d13229d7eba509bdb4685f7"
NOT_UTC = "must be an ISO 8601 UTC date-time ending in Z, as in 2025-01-15T10:30:00Z"
BAD_ID = "must be aigrc-YYYY-, then 8 lowercase hex digits"

MINIMAL_DOCUMENT: dict[str, Any] = {
    "id": "aigrc-2025-0a1b2c3d",
    "name": "Invoice triage agent",
    "created": "2025-01-15T10:30:00Z",
    "updated": "2025-01-15T10:30:00Z",
    "ownership": {"owner": {"name": "Ada Lovelace", "email": "ada@example.com"}},
    "technical": {"type": "agent"},
    "classification": {"riskLevel": "limited", "riskFactors": {}},
    "intent": {},
    "governance": {"status": "draft"},
}


def _text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def _minimal(extra: str = "") -> str:
    """The minimal card with ``extra`` lines of YAML appended at the top level."""
    return _text("minimal.yaml") + extra


def _extension(value: str) -> object:
    """What the YAML scalar ``value`` reads as, under a key the schema does not know."""
    return parse(_minimal(f"x-value: {value}\n")).document["x-value"]


def _pointers(source: str | bytes | dict[str, Any]) -> list[str]:
    with pytest.raises(CardInvalid) as raised:
        if isinstance(source, dict):
            validate(source)
        else:
            parse(source)
    return [error.pointer for error in raised.value.errors]


def _errors(source: str | bytes | dict[str, Any]) -> list[FieldError]:
    with pytest.raises(CardInvalid) as raised:
        if isinstance(source, dict):
            validate(source)
        else:
            parse(source)
    return raised.value.errors


def _only_json_types(value: object) -> bool:
    """Whether ``value`` holds nothing but the exact JSON types (no ``int`` subclass carrying YAML text)."""
    if type(value) is dict:
        return all(type(key) is str and _only_json_types(item) for key, item in value.items())
    if type(value) is list:
        return all(_only_json_types(item) for item in value)
    return type(value) in (str, int, float, bool, type(None))


def _with(document: dict[str, Any], pointer: str, value: object) -> dict[str, Any]:
    """A deep copy of ``document`` with ``value`` set at ``pointer`` (parents created as needed)."""
    result = copy.deepcopy(document)
    *parents, last = pointer.lstrip("/").split("/")
    target = result
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value
    return result


# --- Valid cards ------------------------------------------------------------------------------------------


def test_the_vocabularies_in_spec_order() -> None:
    assert RISK_LEVELS == ("minimal", "limited", "high", "unacceptable")
    assert STATUSES == ("draft", "linked", "approved", "production", "deprecated", "revoked")
    assert TECHNICAL_TYPES == ("model", "agent", "api_client", "framework", "pipeline")


def test_a_minimal_card() -> None:
    card = parse(_text("minimal.yaml"), filename="minimal.yaml")
    assert card.document == MINIMAL_DOCUMENT
    assert _only_json_types(card.document)
    assert card.id == "aigrc-2025-0a1b2c3d"
    assert card.name == "Invoice triage agent"
    # The default version is the card's, not written into its document (the hash is over what was written).
    assert card.version == "1.0.0"
    assert "version" not in card.document
    assert card.risk_level == "limited"
    assert card.status == "draft"
    assert card.golden_thread is None
    assert card.capabilities is None
    assert card.max_cost_per_request is None
    assert card.verification_failure_mode == "SANDBOX"
    assert verify_golden_thread(card) is None


def test_a_card_with_every_section() -> None:
    card = parse((DATA / "full.yaml").read_bytes())
    document = card.document
    assert _only_json_types(document)
    assert card.id == "aigrc-2025-7f3e9a01"
    assert card.version == "2.3.1"
    assert card.risk_level == "high"
    assert card.status == "production"
    assert document["$schema"] == "https://aigrc.dev/schemas/asset-card/v1.json"
    assert document["updated"] == "2025-01-15T10:30:00.250Z"
    assert document["technical"]["components"] == [
        {"type": "llm", "provider": "openai", "model": "gpt-4o"},
        {"type": "vector_store"},
    ]
    assert document["classification"]["riskFactors"] == {
        "autonomousDecisions": True,
        "customerFacing": True,
        "toolExecution": True,
        "externalDataAccess": False,
        "piiProcessing": "yes",
        "highStakesDecisions": False,
    }
    assert document["classification"]["jurisdictions"] == ["EU", "US"]
    assert document["intent"]["ticketUrl"] == "https://corp.atlassian.net/browse/FIN-1234"
    assert document["governance"]["approvals"][1] == {
        "role": "DPO",
        "name": "Dan Jones",
        "date": "2025-01-14",
    }
    assert document["constraints"]["runtime"] == {
        "maxIterations": 25,
        "timeoutSeconds": 120,
        "maxTokensPerRequest": 4096,
        "maxCostPerRequestUsd": 0.5,
    }
    assert document["constraints"]["humanApprovalRequired"] == ["issue_refund", "close_account"]
    assert document["runtime"]["kill_switch"] == {"enabled": True, "channel": "sse"}
    assert card.max_cost_per_request == 0.5
    assert card.verification_failure_mode == "FAIL"
    assert card.golden_thread == CardGoldenThread(
        ticket_id="FIN-1234",
        approved_by="ciso@corp.com",
        approved_at="2025-01-15T10:30:00Z",
        hash=SPEC_HASH,
        signature=document["golden_thread"]["signature"],
    )
    assert document["golden_thread"]["signature"].startswith("ECDSA-P256:")
    # Domains are compared lower-cased; the document keeps them as written. max_budget 100 is a float.
    assert card.capabilities == Capabilities(
        tools=("web_search", "db_*", "crm.lookup"),
        domains=("*.example.com", "api.stripe.com"),
        max_budget=100.0,
    )
    assert document["runtime"]["capabilities"]["allowed_domains"] == ["*.Example.com", "api.stripe.com"]
    assert document["runtime"]["capabilities"]["max_budget"] == 100


def test_the_golden_thread_of_the_spec_vector_verifies() -> None:
    card = parse(_text("full.yaml"))
    assert verify_golden_thread(card) == Verification(True, "spec")


def test_the_golden_thread_forms_and_mismatches() -> None:
    document = parse(_text("full.yaml")).document
    thread = "/golden_thread"
    upper = _with(document, f"{thread}/approved_by", "CISO@Corp.com")
    # The stored hash is the spec vector, computed with the email lower-cased.
    assert verify_golden_thread(validate(upper)) == Verification(True, "spec")
    reference = (
        "sha256:"
        + hashlib.sha256(
            b"approved_at=2025-01-15T10:30:00Z|approved_by=CISO@Corp.com|ticket_id=FIN-1234"
        ).hexdigest()
    )
    assert verify_golden_thread(validate(_with(upper, f"{thread}/hash", reference))) == Verification(
        True, "reference"
    )
    other_ticket = _with(document, f"{thread}/ticket_id", "FIN-9999")
    assert verify_golden_thread(validate(other_ticket)) == Verification(False, None)
    later = _with(document, f"{thread}/approved_at", "2025-01-15T10:30:01Z")
    assert verify_golden_thread(validate(later)) == Verification(False, None)
    without_hash = copy.deepcopy(document)
    del without_hash["golden_thread"]["hash"]
    card = validate(without_hash)
    assert card.golden_thread is not None
    assert card.golden_thread.hash is None
    assert verify_golden_thread(card) is None


def test_yaml_1_1_traps_keep_their_text() -> None:
    card = parse(_text("yaml-traps.yaml"))
    document = card.document
    assert _only_json_types(document)
    # Unquoted timestamps stay text, exactly as written (a datetime would change the Golden Thread hash).
    assert document["created"] == "2025-01-15T10:30:00Z"
    assert document["updated"] == "2025-01-15T10:30:00.5Z"
    assert document["golden_thread"]["approved_at"] == "2025-01-15T10:30:00Z"
    assert document["governance"]["approvals"][0]["date"] == "2025-01-15"
    # Numbers where the schema wants text come back as written.
    assert card.version == document["version"] == "1.10"
    assert card.name == document["name"] == "2025"
    assert document["technical"]["framework"] == "3.0"
    assert document["intent"]["ticketId"] == "1234"
    assert document["classification"]["jurisdictions"] == ["no", "on", "0755"]
    # yes/no are text in YAML 1.2 (and "no" is a valid piiProcessing).
    assert document["classification"]["riskFactors"]["piiProcessing"] == "no"
    assert document["intent"]["businessJustification"] == "yes"
    # Where the schema says nothing, YAML 1.2 core types: 0755 is decimal, 1.10 the number 1.1.
    assert document["x-notes"] == {
        "switch": "on",
        "answer": "yes",
        "mode": 755,
        "ratio": 1.1,
        "nothing": None,
        "truth": True,
    }
    assert verify_golden_thread(card) == Verification(True, "spec")


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("1.0", "1.0"),
        ("1.10", "1.10"),
        ("1", "1"),
        ("01", "01"),
        ("2.0.0", "2.0.0"),
        ("1e3", "1e3"),
        ("0x1F", "0x1F"),
        ("0o17", "0o17"),
        ("-1.50", "-1.50"),
        (".inf", ".inf"),
        ("'1.0'", "1.0"),
        ('"1.10"', "1.10"),
        ("!!str 1.10", "1.10"),
        ("!!float 1.10", "1.10"),
    ],
)
def test_a_version_keeps_the_text_it_was_written_as(written: str, read: str) -> None:
    card = parse(_minimal(f"version: {written}\n"))
    assert card.version == read
    assert card.document["version"] == read
    assert type(card.document["version"]) is str


@pytest.mark.parametrize(
    ("written", "read"),
    [
        # YAML 1.2 core booleans and nulls only.
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("FALSE", False),
        ("null", None),
        ("Null", None),
        ("~", None),
        ("", None),
        # YAML 1.1 booleans are text.
        ("yes", "yes"),
        ("No", "No"),
        ("on", "on"),
        ("OFF", "OFF"),
        ("y", "y"),
        ("n", "n"),
        # YAML 1.2 integers and floats.
        ("12", 12),
        ("-12", -12),
        ("+12", 12),
        ("0", 0),
        ("0755", 755),
        ("0o17", 15),
        ("0x1F", 31),
        ("1.5", 1.5),
        (".5", 0.5),
        ("-2.", -2.0),
        ("1e3", 1000.0),
        ("1.0E-2", 0.01),
        # YAML 1.1 numbers and timestamps are text.
        ("1_000", "1_000"),
        ("1:30", "1:30"),
        ("0b101", "0b101"),
        ("2025-01-15", "2025-01-15"),
        ("2025-01-15T10:30:00Z", "2025-01-15T10:30:00Z"),
        ("2025-01-15 10:30:00", "2025-01-15 10:30:00"),
        ("=", "="),
        ("<<", "<<"),
        # Quoted is always text; explicit core tags are honoured.
        ("'true'", "true"),
        ('"12"', "12"),
        ("!!str 12", "12"),
        ("!!str true", "true"),
        ("!!int 12", 12),
        ("!!float 1", 1.0),
        ("!!bool false", False),
        ("!!null ''", None),
        ("! 12", "12"),
    ],
)
def test_scalars_resolve_as_in_the_yaml_1_2_core_schema(written: str, read: object) -> None:
    value = _extension(written)
    assert value == read
    assert type(value) is type(read)


def test_unknown_keys_are_kept_at_every_depth_and_change_the_hash() -> None:
    card = parse(_text("unknown-keys.yaml"))
    document = card.document
    assert _only_json_types(document)
    assert document["x-team-wiki"] == "https://wiki.corp.com/invoice-triage"
    assert document["ownership"]["owner"] == {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "team": "finance-automation",
        "slack": "#finance-ai",
    }
    assert document["technical"]["sourceFiles"] == ["src/agent.py"]
    assert document["technical"]["components"] == [{"type": "llm", "temperature": 0.2}]
    assert document["classification"]["euAiAct"] == {"category": "limited_risk", "transparencyRequired": True}
    assert document["governance"]["deployment"] == {
        "environments": ["staging"],
        "extra": {"deeply": {"nested": [1, 2.5, None, True, {"k/with~chars": "v"}]}},
    }
    # Without its unknown keys, the card is the minimal one.
    known = copy.deepcopy(document)
    del known["x-team-wiki"]
    del known["ownership"]["owner"]["team"], known["ownership"]["owner"]["slack"]
    del known["technical"]["sourceFiles"], known["technical"]["components"]
    del known["classification"]["euAiAct"]
    del known["governance"]["deployment"]
    assert known == MINIMAL_DOCUMENT
    minimal_hash = parse(_text("minimal.yaml")).content_hash()
    assert card.content_hash() != minimal_hash
    assert validate(known).content_hash() == minimal_hash
    # Any change at any depth changes the hash.
    deep = _with(
        document, "/governance/deployment/extra/deeply/nested", [1, 2.5, None, True, {"k/with~chars": "w"}]
    )
    assert validate(deep).content_hash() != card.content_hash()


def test_the_content_hash_is_over_the_canonical_json() -> None:
    card = parse(_text("minimal.yaml"))
    assert card.canonical() == canonical(MINIMAL_DOCUMENT)
    assert card.canonical().startswith(
        b'{"classification":{"riskFactors":{},"riskLevel":"limited"},"created":'
    )
    assert card.content_hash() == "sha256:" + hashlib.sha256(card.canonical()).hexdigest()


def test_the_content_hash_ignores_key_order_formatting_and_syntax() -> None:
    expected = parse(_text("minimal.yaml")).content_hash()
    flow = (
        "{governance: {status: draft}, intent: {}, 'classification': {riskFactors: {}, riskLevel: limited},\n"
        ' technical: {type: agent}, ownership: {owner: {email: "ada@example.com", name: Ada Lovelace}},\n'
        " updated: 2025-01-15T10:30:00Z, created: '2025-01-15T10:30:00Z', name: Invoice triage agent,\n"
        " id: aigrc-2025-0a1b2c3d}  # all on a few lines\n"
    )
    assert parse(flow).content_hash() == expected
    assert parse(_text("minimal.json")).content_hash() == expected
    assert parse((DATA / "minimal.json").read_bytes()).content_hash() == expected
    assert validate(json.loads(_text("minimal.json"))).content_hash() == expected
    # The full card against the same card as JSON, keys reversed at every level, pretty-printed or not.
    full = parse(_text("full.yaml"))

    def reversed_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: reversed_keys(value[key]) for key in reversed(list(value))}
        if isinstance(value, list):
            return [reversed_keys(item) for item in value]
        return value

    as_json = reversed_keys(full.document)
    assert parse(json.dumps(as_json, indent=4)).content_hash() == full.content_hash()
    assert parse(json.dumps(as_json, separators=(",", ":"))).content_hash() == full.content_hash()
    assert parse(json.dumps(as_json, ensure_ascii=False)).content_hash() == full.content_hash()


def test_validating_a_cards_document_again_gives_the_same_card() -> None:
    for name in ("minimal.yaml", "full.yaml", "yaml-traps.yaml", "unknown-keys.yaml"):
        card = parse(_text(name))
        again = validate(json.loads(json.dumps(card.document)))
        assert again == card, name
        assert again.content_hash() == card.content_hash()


def test_json_input() -> None:
    card = parse(_text("minimal.json"))
    assert card.document == MINIMAL_DOCUMENT
    assert list(card.document) == list(reversed(list(MINIMAL_DOCUMENT)))  # kept in the order written


def test_a_utf8_byte_order_mark_and_non_ascii_text() -> None:
    text = _minimal("description: Prüft Rechnungen — schnell ✓\n").replace("Ada Lovelace", "Ådá Lövelace")
    card = parse(b"\xef\xbb\xbf" + text.encode())
    assert card.document["description"] == "Prüft Rechnungen — schnell ✓"
    assert card.document["ownership"]["owner"]["name"] == "Ådá Lövelace"
    assert parse(text).content_hash() == card.content_hash()


# --- Invalid cards ----------------------------------------------------------------------------------------


def test_missing_required_fields() -> None:
    # The object's own missing fields first, then what is wrong inside its members, in the card's order.
    assert _errors(_text("invalid/missing-required.yaml")) == [
        FieldError("/id", "is required"),
        FieldError("/created", "is required"),
        FieldError("/updated", "is required"),
        FieldError("/technical", "is required"),
        FieldError("/intent", "is required"),
        FieldError("/governance", "is required"),
        FieldError("/ownership/owner/email", "is required"),
        FieldError("/classification/riskFactors", "is required"),
    ]


def test_every_wrong_field_is_reported_in_the_order_of_the_card() -> None:
    errors = _errors(_text("invalid/bad-fields.yaml"))
    assert [error.pointer for error in errors] == [
        "/id",
        "/name",
        "/created",
        "/updated",
        "/ownership/owner/email",
        "/technical/type",
        "/classification/riskLevel",
        "/classification/riskFactors/customerFacing",
        "/classification/riskFactors/piiProcessing",
        "/intent/linked",
        "/governance/status",
        "/governance/approvals",
        "/constraints/runtime/maxIterations",
        "/constraints/runtime/timeoutSeconds",
        "/constraints/runtime/maxCostPerRequestUsd",
        "/runtime/verification_failure_mode",
        "/runtime/kill_switch/enabled",
    ]
    details = {error.pointer: error.detail for error in errors}
    assert details["/id"] == BAD_ID
    assert details["/name"] == "must be a string, not a list"
    assert details["/created"] == NOT_UTC  # an offset, however valid, is refused
    assert details["/updated"] == NOT_UTC  # 30 February
    assert details["/ownership/owner/email"] == "must be an email address"
    assert details["/technical/type"] == "must be one of model, agent, api_client, framework, pipeline"
    assert details["/classification/riskLevel"] == "must be one of minimal, limited, high, unacceptable"
    assert details["/classification/riskFactors/customerFacing"] == "must be true or false, not a string"
    assert details["/classification/riskFactors/piiProcessing"] == "must be one of yes, no, unknown"
    assert details["/governance/approvals"] == "must be a list, not an object"
    assert details["/constraints/runtime/maxIterations"] == "must be a whole number >= 0"
    assert details["/constraints/runtime/timeoutSeconds"] == "must be a whole number >= 0"
    assert details["/constraints/runtime/maxCostPerRequestUsd"] == "must be a number >= 0"
    assert details["/runtime/verification_failure_mode"] == "must be one of SANDBOX, FAIL"
    assert details["/runtime/kill_switch/enabled"] == "must be true or false, not a number"


def test_a_bad_golden_thread() -> None:
    assert _errors(_text("invalid/bad-golden-thread.yaml")) == [
        FieldError("/golden_thread/ticket_id", "is required"),
        FieldError("/golden_thread/approved_by", "must be an email address"),
        FieldError("/golden_thread/approved_at", NOT_UTC),
        FieldError("/golden_thread/hash", "must be sha256:, then 64 lowercase hex digits"),
        FieldError("/golden_thread/signature", "must be RSA-SHA256: or ECDSA-P256:, then base64"),
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ticket_id", "   "),
        ("ticket_id", 1234),
        ("approved_by", "ciso@corp"),
        ("approved_at", "2025-01-15T10:30Z"),
        ("approved_at", "2025-01-15t10:30:00z"),
        ("approved_at", "2025-01-15"),
        ("hash", "sha256:" + "0" * 63),
        ("hash", "sha1:" + "0" * 40),
        ("signature", "RSA-SHA256:"),
        ("signature", "ECDSA-P256:not base64!"),
    ],
)
def test_golden_thread_fields(field: str, value: object) -> None:
    document = parse(_text("full.yaml")).document
    assert _pointers(_with(document, f"/golden_thread/{field}", value)) == [f"/golden_thread/{field}"]


def test_bad_capabilities() -> None:
    errors = _errors(_text("invalid/bad-capabilities.yaml"))
    assert [error.pointer for error in errors] == [
        "/runtime/capabilities/allowed_tools/1",
        "/runtime/capabilities/allowed_tools/2",
        "/runtime/capabilities/allowed_domains",
        "/runtime/capabilities/max_budget",
    ]
    assert errors[0].detail == "must not be empty"
    assert "whitespace" in errors[1].detail
    assert errors[2].detail == "must be a list, not a string"
    assert errors[3].detail == "must be a number >= 0"


@pytest.mark.parametrize(
    ("pointer", "value", "at"),
    [
        ("/runtime/capabilities/allowed_tools", [f"tool_{i}" for i in range(201)], ""),
        ("/runtime/capabilities/allowed_tools", ["t" * 201], "/0"),
        ("/runtime/capabilities/allowed_tools", ["ok", 7], "/1"),
        ("/runtime/capabilities/allowed_tools", ["web_[a-z]"], "/0"),
        ("/runtime/capabilities/allowed_domains", ["example.com", "*.com"], "/1"),
        ("/runtime/capabilities/allowed_domains", ["exa mple.com"], "/0"),
        ("/runtime/capabilities/allowed_domains", ["api.*.example.com"], "/0"),
        ("/runtime/capabilities/allowed_domains", [f"h{i}.example.com" for i in range(201)], ""),
        ("/runtime/capabilities/max_budget", True, ""),
        ("/runtime/capabilities/max_budget", "100", ""),
        ("/runtime/capabilities/max_budget", -0.01, ""),
        ("/runtime/capabilities/max_budget", float("inf"), ""),
        ("/runtime/capabilities/max_budget", float("nan"), ""),
        ("/runtime/capabilities", ["web_search"], ""),
    ],
)
def test_capability_bounds(pointer: str, value: object, at: str) -> None:
    assert _pointers(_with(MINIMAL_DOCUMENT, pointer, value)) == [pointer + at]


def test_capabilities_at_their_bounds() -> None:
    document = _with(MINIMAL_DOCUMENT, "/runtime/capabilities/allowed_tools", ["t" * 200] + ["x"] * 199)
    document = _with(document, "/runtime/capabilities/allowed_domains", ["*"])
    card = validate(_with(document, "/runtime/capabilities/max_budget", 0))
    assert card.capabilities == Capabilities(
        tools=("t" * 200,) + ("x",) * 199, domains=("*",), max_budget=0.0
    )
    # Only what is given: no tools listed means none allowed, no budget means no ceiling.
    empty = validate(_with(MINIMAL_DOCUMENT, "/runtime/capabilities", {}))
    assert empty.capabilities == Capabilities()


def test_a_cards_capabilities_bound_an_agents() -> None:
    bounds = parse(_text("full.yaml")).capabilities
    assert bounds is not None
    assert bounds.covers(Capabilities(tools=("db_read",), domains=("api.example.com",), max_budget=50)) == []
    assert bounds.covers(Capabilities(tools=("shell",), domains=("evil.com",), max_budget=500)) == [
        "tool 'shell'",
        "domain 'evil.com'",
        "max_budget 500 above 100.0",
    ]


@pytest.mark.parametrize(
    ("pointer", "value", "detail"),
    [
        ("/name", "", "must not be empty"),
        ("/name", "n" * 101, "must be at most 100 characters"),
        ("/name", None, "must be a string, not null"),
        ("/description", "d" * 501, "must be at most 500 characters"),
        ("/version", "", "must not be empty"),
        ("/version", 1.0, "must be a string, not a number"),  # a Python float has no text to keep
        ("/id", "aigrc-25-0a1b2c3d", BAD_ID),
        ("/id", "aigrc-2025-0a1b2c3d4", BAD_ID),
        ("/id", "aigrc-2025-0a1b2c3d\n", BAD_ID),
        ("/created", "2025-01-15T10:30:00", NOT_UTC),
        ("/created", "2025-01-15T10:30:00-00:00", NOT_UTC),
        ("/created", "2025-13-01T10:30:00Z", NOT_UTC),
        ("/created", "2025-01-15T24:00:00Z", NOT_UTC),
        ("/ownership", "Ada", "must be an object, not a string"),
        ("/ownership/owner/email", "ada@example", "must be an email address"),
        ("/ownership/owner/email", "ada lovelace@example.com", "must be an email address"),
        ("/ownership/owner/name", "", "must not be empty"),
        ("/technical/type", "Agent", "must be one of model, agent, api_client, framework, pipeline"),
        ("/technical/framework", ["langchain"], "must be a string, not a list"),
        ("/technical/components", {"type": "llm"}, "must be a list, not an object"),
        ("/technical/components", [{"provider": "openai"}], None),
        ("/classification/riskLevel", "HIGH", "must be one of minimal, limited, high, unacceptable"),
        ("/classification/riskFactors", [], "must be an object, not a list"),
        ("/classification/riskFactors/toolExecution", 1, "must be true or false, not a number"),
        ("/classification/riskFactors/piiProcessing", True, "must be a string, not a boolean"),
        ("/classification/jurisdictions", "EU", "must be a list, not a string"),
        ("/classification/jurisdictions", ["EU", None], None),
        ("/intent", None, "must be an object, not null"),
        ("/intent/ticketUrl", 5, None),
        ("/governance/status", "archived", None),
        ("/governance/approvals", [{"role": "CISO", "name": "Carol"}], None),
        (
            "/governance/approvals",
            [{"role": "CISO", "name": "Carol", "date": "2025-01-15", "email": "x"}],
            None,
        ),
        ("/constraints", [], "must be an object, not a list"),
        ("/constraints/runtime/maxTokensPerRequest", 2**63, "must be a whole number >= 0"),
        ("/constraints/runtime/maxTokensPerRequest", 4096.0, "must be a whole number >= 0"),
        ("/constraints/runtime/maxCostPerRequestUsd", "0.5", "must be a number >= 0, not a string"),
        ("/constraints/humanApprovalRequired", ["refund", 5], None),
        ("/constraints/monitoring", True, "must be an object, not a boolean"),
        ("/constraints/monitoring/logAllDecisions", "yes", "must be true or false, not a string"),
        ("/golden_thread", "FIN-1234", "must be an object, not a string"),
        ("/runtime", None, "must be an object, not null"),
        ("/runtime/kill_switch/channel", 3, "must be a string, not a number"),
    ],
)
def test_one_wrong_field(pointer: str, value: object, detail: str | None) -> None:
    errors = _errors(_with(MINIMAL_DOCUMENT, pointer, value))
    assert len(errors) == 1
    assert errors[0].pointer.startswith(pointer)
    if detail is not None:
        assert errors[0] == FieldError(pointer, detail)


@pytest.mark.parametrize(
    ("pointer", "value"),
    [
        ("/description", "d" * 500),
        ("/name", "n" * 100),
        ("/created", "2024-02-29T23:59:59.999999999Z"),
        ("/intent/ticketSystem", None),
        ("/intent/riskTolerance", None),
        ("/intent/linked", False),
        ("/constraints/runtime/maxCostPerRequestUsd", 0),
        ("/constraints/runtime/maxIterations", 0),
        ("/governance/approvals", []),
        ("/technical/components", []),
        ("/x-anything", {"nested": [{"deeper": None}]}),
        ("/id", "aigrc-1999-ffffffff"),
    ],
)
def test_values_at_the_edges_of_the_schema(pointer: str, value: object) -> None:
    validate(_with(MINIMAL_DOCUMENT, pointer, value))


@pytest.mark.parametrize("status", STATUSES)
def test_every_status(status: str) -> None:
    assert validate(_with(MINIMAL_DOCUMENT, "/governance/status", status)).status == status


@pytest.mark.parametrize("level", RISK_LEVELS)
def test_every_risk_level(level: str) -> None:
    assert validate(_with(MINIMAL_DOCUMENT, "/classification/riskLevel", level)).risk_level == level


def test_a_field_error_names_its_place_and_the_exception_its_file() -> None:
    with pytest.raises(CardInvalid) as raised:
        parse(_text("invalid/missing-required.yaml"), filename=".aigrc/cards/half.yaml")
    assert raised.value.filename == ".aigrc/cards/half.yaml"
    assert str(raised.value).startswith(".aigrc/cards/half.yaml: /id: is required; /created: is required")
    assert isinstance(raised.value, ValueError)
    assert str(FieldError("", "is empty")) == "is empty"
    assert str(FieldError("/a~1b", "is required")) == "/a~1b: is required"


# --- Input that is not a card -----------------------------------------------------------------------------


def test_invalid_yaml() -> None:
    errors = _errors(_text("invalid/not-yaml.yaml"))
    assert len(errors) == 1
    assert errors[0].pointer == ""
    assert errors[0].detail.startswith("is not valid YAML: ")
    assert "line 3" in errors[0].detail


@pytest.mark.parametrize(
    "text",
    [
        "id: [unclosed\n",
        "a: b: c\n",
        "a:\n  - b\n c: d\n",
        "\tid: tab-indented\n",
        "id: aigrc-2025-0a1b2c3d\x00\n",
        "key: 'unterminated\n",
        '{"id": "aigrc-2025-0a1b2c3d",}x\n',
    ],
)
def test_text_that_is_not_yaml(text: str) -> None:
    errors = _errors(text)
    assert [error.pointer for error in errors] == [""]
    assert errors[0].detail.startswith("is not valid YAML")


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        (_text("invalid/top-level-list.yaml"), "a card must be a mapping (an object), not a list"),
        ("just text\n", "a card must be a mapping (an object), not a string"),
        ("42\n", "a card must be a mapping (an object), not a number"),
        ("---\n", "a card must be a mapping (an object), not null"),
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        (_text("invalid/two-documents.yaml"), "holds more than one YAML document"),
        (_minimal("---\n"), "holds more than one YAML document"),
    ],
)
def test_the_top_level_must_be_one_mapping(text: str, detail: str) -> None:
    assert _errors(text) == [FieldError("", detail)]


def test_validate_refuses_what_is_not_a_mapping() -> None:
    assert _errors_of_validate(None) == [FieldError("", "a card must be a mapping (an object), not null")]
    assert _errors_of_validate([MINIMAL_DOCUMENT]) == [
        FieldError("", "a card must be a mapping (an object), not a list")
    ]


def _errors_of_validate(value: object) -> list[FieldError]:
    with pytest.raises(CardInvalid) as raised:
        validate(value)
    return raised.value.errors


def test_aliases_are_refused() -> None:
    assert _errors(_text("invalid/alias.yaml")) == [
        FieldError("/x-lol2/0", "uses the alias *lol: aliases are refused")
    ]
    # The full billion laughs, refused at its first alias without expanding anything.
    laughs = ['lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    assert _pointers("\n".join(laughs)) == ["/lol1/0"]
    # A merge key needs an alias too.
    assert _pointers(_minimal("base: &base {a: 1}\nx-merged:\n  <<: *base\n")) == ["/x-merged/<<"]


def test_an_anchor_alone_is_harmless() -> None:
    assert parse(_minimal("x-anchored: &a {k: v}\n")).document["x-anchored"] == {"k": "v"}


@pytest.mark.parametrize(
    ("text", "pointer"),
    [
        ("x-map:\n  1: one\n", "/x-map"),
        ("x-map:\n  true: yes\n", "/x-map"),
        ("x-map:\n  null: nothing\n", "/x-map"),
        ("x-map:\n  1.5: x\n", "/x-map"),
        ("x-map:\n  ? [a, b]\n  : c\n", "/x-map"),
        ("x-map:\n  ? {a: b}\n  : c\n", "/x-map"),
        ("2025: year\n", ""),
    ],
)
def test_keys_must_be_text(text: str, pointer: str) -> None:
    errors = _errors(_minimal(text))
    assert [error.pointer for error in errors] == [pointer]
    assert "keys are text" in errors[0].detail


def test_quoted_keys_that_look_like_numbers_are_text() -> None:
    assert parse(_minimal("x-map:\n  '1': one\n  \"true\": yes\n")).document["x-map"] == {
        "1": "one",
        "true": "yes",
    }


def test_duplicate_keys_are_refused() -> None:
    assert _errors(_minimal("name: Again\n")) == [FieldError("/name", "is a duplicate key")]
    assert _errors(_minimal("x:\n  a: 1\n  b: 2\n  a: 3\n")) == [FieldError("/x/a", "is a duplicate key")]


@pytest.mark.parametrize(
    ("value", "pointer"),
    [
        ("!!timestamp 2025-01-15", "/x-value"),
        ("!!binary aGVsbG8=", "/x-value"),
        ("!!set {a, b}", "/x-value"),
        ("!!omap [a: 1]", "/x-value"),
        ("!!python/object/apply:os.system [echo]", "/x-value"),
        ("!custom thing", "/x-value"),
        ("[ok, !!python/name:os.system '']", "/x-value/1"),
        ("!!int twelve", "/x-value"),
        ("!!int 1_000", "/x-value"),
        ("!!bool yes", "/x-value"),
        ("!!float one", "/x-value"),
        ("!!null nothing", "/x-value"),
    ],
)
def test_other_tags_are_refused(value: str, pointer: str) -> None:
    assert _pointers(_minimal(f"x-value: {value}\n")) == [pointer]


@pytest.mark.parametrize(
    ("value", "pointer"),
    [
        (".nan", "/x-value"),
        (".NaN", "/x-value"),
        (".inf", "/x-value"),
        ("-.Inf", "/x-value"),
        ("+.INF", "/x-value"),
        ("1e999", "/x-value"),
        ("[1, .nan]", "/x-value/1"),
        ("{a: {b: -.inf}}", "/x-value/a/b"),
    ],
)
def test_nan_and_infinity_are_refused(value: str, pointer: str) -> None:
    assert _errors(_minimal(f"x-value: {value}\n")) == [
        FieldError(pointer, "must be a finite number (JSON has no NaN or infinity)")
    ]


def test_nan_in_a_number_field_and_as_text_in_a_string_field() -> None:
    limits = "constraints:\n  runtime:\n    maxCostPerRequestUsd: .nan\n"
    assert _pointers(_minimal(limits)) == ["/constraints/runtime/maxCostPerRequestUsd"]
    card = parse(_text("minimal.yaml").replace("name: Invoice triage agent", "name: .inf"))
    assert card.name == ".inf"


def test_integers_json_cannot_hold_are_refused() -> None:
    assert _pointers(_minimal(f"x-value: {2**63}\n")) == ["/x-value"]
    assert _pointers(_minimal(f"x-value: {-(2**63) - 1}\n")) == ["/x-value"]
    assert _extension(str(2**63 - 1)) == 2**63 - 1
    assert _extension(str(-(2**63))) == -(2**63)
    # More digits than Python reads as a number: refused with its place, not a crash.
    assert _pointers(_minimal("x-value: " + "9" * 5000 + "\n")) == ["/x-value"]


def test_nesting_is_bounded() -> None:
    inside = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert parse(_minimal(f"x-deep: {inside}\n")).document["x-deep"] is not None
    errors = _errors(_minimal(f"x-deep: [{inside}]\n"))
    assert [error.detail for error in errors] == [f"is nested more than {MAX_DEPTH} levels deep"]
    assert errors[0].pointer == "/x-deep" + "/0" * (MAX_DEPTH - 1)
    # Far deeper than any stack: refused, not a crash (libyaml's own composer would overflow the C stack).
    assert _pointers("x: " + "[" * 200_000) == ["/x" + "/0" * (MAX_DEPTH - 1)]
    block = "x:\n" + "".join("  " * depth + "k:\n" for depth in range(1, 300))
    assert _pointers(block) == ["/x" + "/k" * (MAX_DEPTH - 1)]


def test_validate_bounds_nesting_of_python_values() -> None:
    deep: dict[str, Any] = {}
    value = deep
    for _ in range(1000):
        value["d"] = {}
        value = value["d"]
    errors = _errors(_with(MINIMAL_DOCUMENT, "/x-deep", deep))
    assert [error.detail for error in errors] == [f"is nested more than {MAX_DEPTH} levels deep"]


def test_validate_refuses_what_json_cannot_hold() -> None:
    import datetime

    assert _pointers(_with(MINIMAL_DOCUMENT, "/x-when", datetime.date(2025, 1, 15))) == ["/x-when"]
    assert _pointers(_with(MINIMAL_DOCUMENT, "/x-bytes", b"raw")) == ["/x-bytes"]
    assert _pointers(_with(MINIMAL_DOCUMENT, "/x-nan", [float("nan")])) == ["/x-nan/0"]
    assert _pointers(_with(MINIMAL_DOCUMENT, "/x-map", {1: "one"})) == ["/x-map"]
    lone = _errors(_with(MINIMAL_DOCUMENT, "/x-text", "\ud800"))
    assert [error.pointer for error in lone] == ["/x-text"]
    nul = _errors(_with(MINIMAL_DOCUMENT, "/x-text", "a\x00b"))
    assert [error.pointer for error in nul] == ["/x-text"]
    # Tuples are lists; the document holds lists.
    card = validate(_with(MINIMAL_DOCUMENT, "/x-tuple", ("a", ("b",))))
    assert card.document["x-tuple"] == ["a", ["b"]]


def test_size_bound() -> None:
    padding = MAX_CARD_BYTES - len(_minimal("x-pad: \n").encode())
    at_bound = _minimal(f"x-pad: {'p' * padding}\n")
    assert len(at_bound.encode()) == MAX_CARD_BYTES
    assert len(parse(at_bound).document["x-pad"]) == padding
    over = _minimal(f"x-pad: {'p' * (padding + 1)}\n")
    detail = f"is larger than {MAX_CARD_BYTES:,} bytes"
    assert _errors(over) == [FieldError("", detail)]
    assert _errors(over.encode()) == [FieldError("", detail)]
    # Measured in UTF-8 bytes, not characters.
    wide = _minimal(f"x-pad: {'é' * (padding // 2 + 1)}\n")
    assert len(wide) <= MAX_CARD_BYTES
    assert _errors(wide) == [FieldError("", detail)]
    assert _errors(b"x" * (10 * MAX_CARD_BYTES)) == [FieldError("", detail)]


def test_text_that_is_not_utf8() -> None:
    assert _pointers(_text("minimal.yaml").encode("utf-16")) == [""]
    assert _errors(b"name: \xff\xfe\n") == [FieldError("", "is not UTF-8 text (byte 6)")]
    assert _errors("name: \ud800\n") == [FieldError("", "is not UTF-8 text")]


def test_both_parsers_read_cards_alike() -> None:
    # libyaml is used when PyYAML has it; PyYAML's own parser otherwise. Both must give the same card.
    for path in sorted(DATA.glob("*.*")):
        text = path.read_text(encoding="utf-8")
        pure = assetcard._documents(yaml.parse(text, Loader=yaml.BaseLoader))
        assert validate(pure[0]) == parse(text), path.name
    # Only PyYAML's parser lets a lone surrogate escape through; it is refused with its place.
    with pytest.raises(CardInvalid) as raised:
        assetcard._documents(yaml.parse('x: "\\ud800"\n', Loader=yaml.BaseLoader))
    assert [error.pointer for error in raised.value.errors] == ["/x"]
