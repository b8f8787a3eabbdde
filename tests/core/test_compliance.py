"""Compliance status of an AIGRC asset card: profiles, controls, evidence, determinism and the HTML report."""

from __future__ import annotations

import copy
import hashlib
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from aigos.core import compliance
from aigos.core.canonical import canonical, parse
from aigos.core.compliance import (
    PROFILES,
    RISK_LEVELS,
    RuntimeEvidence,
    evidence_from_events,
    report_hash,
    status,
)
from aigos.core.compliance_report import html

GENERATED_AT = "2025-03-02T09:00:00Z"

NOTHING_OBSERVED = RuntimeEvidence(
    agents_live=0,
    decisions_logged=0,
    violations=0,
    kill_switch_triggers=0,
    kill_switch_acknowledged=0,
    golden_thread_verified=None,
    human_oversight=False,
    last_event_at=None,
)

OBSERVED = RuntimeEvidence(
    agents_live=2,
    decisions_logged=40,
    violations=3,
    kill_switch_triggers=1,
    kill_switch_acknowledged=1,
    golden_thread_verified=None,
    human_oversight=False,
    last_event_at="2025-03-01T10:05:00.250000Z",
)


def _card(risk_level: str = "high", **sections: Any) -> dict[str, Any]:
    """A card in the TypeScript reference's schema; ``sections`` replace top-level keys."""
    card: dict[str, Any] = {
        "id": "aigrc-2025-0a1b2c3d",
        "name": "Claims triage agent",
        "version": "1.0.0",
        "created": "2025-01-10T08:00:00Z",
        "updated": "2025-01-15T10:30:00Z",
        "ownership": {"owner": {"name": "Ana Ruiz", "email": "ana@corp.example"}},
        "technical": {"type": "agent", "framework": "langchain"},
        "classification": {
            "riskLevel": risk_level,
            "riskFactors": {"autonomousDecisions": True, "customerFacing": True, "piiProcessing": "yes"},
            "jurisdictions": ["eu", "US"],
        },
        "intent": {
            "linked": True,
            "ticketSystem": "jira",
            "ticketId": "FIN-1234",
            "businessJustification": "Cut claim triage time from days to hours.",
        },
        "governance": {
            "status": "approved",
            "approvals": [
                {"role": "ciso", "name": "Jane Doe", "email": "ciso@corp.example", "date": "2025-01-15"},
                {"role": "dpo", "name": "Li Wei", "email": "dpo@corp.example", "date": "2025-01-14"},
            ],
        },
        "constraints": {"monitoring": {"logAllDecisions": True}},
    }
    card.update(sections)
    return card


def _profile(report: dict[str, Any], profile_id: str) -> dict[str, Any]:
    (found,) = [part for part in report["profiles"] if part["profile"] == profile_id]
    return found


def _statuses(part: dict[str, Any]) -> dict[str, str]:
    return {control["id"]: control["status"] for control in part["controls"]}


def _reversed_keys(value: Any) -> Any:
    """The same document with every object's keys in reverse insertion order."""
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(item) for item in value]
    return value


def test_high_risk_eu_card_with_card_and_runtime_evidence() -> None:
    report = status(_card(), OBSERVED, generated_at=GENERATED_AT)

    assert report["asset_id"] == "aigrc-2025-0a1b2c3d"
    assert report["asset_name"] == "Claims triage agent"
    assert report["risk_level"] == "high"
    assert report["generated_at"] == GENERATED_AT
    # "eu" in the jurisdictions, in any case, adds the EU AI Act to the two profiles every card gets.
    assert [part["profile"] for part in report["profiles"]] == ["eu-ai-act", "iso-42001", "nist-ai-rmf"]
    assert report["unknown_profiles"] == []

    eu = _profile(report, "eu-ai-act")
    assert eu["level"] == "high"
    assert eu["prohibited"] is False
    # Articles 9 to 15, in article order; data governance and robustness have no evidence AIGOS can see.
    assert _statuses(eu) == {
        "eu-art-9": "met",
        "eu-art-10": "missing",
        "eu-art-11": "met",
        "eu-art-12": "met",
        "eu-art-13": "met",
        "eu-art-14": "met",
        "eu-art-15": "missing",
    }
    assert [control["id"] for control in eu["controls"]] == [
        "eu-art-9",
        "eu-art-10",
        "eu-art-11",
        "eu-art-12",
        "eu-art-13",
        "eu-art-14",
        "eu-art-15",
    ]
    assert (eu["applicable"], eu["implemented"], eu["percentage"], eu["compliant"]) == (7, 5, 71, False)

    nist = _profile(report, "nist-ai-rmf")
    assert nist["level"] == "high"
    assert _statuses(nist) == {
        "nist-govern": "met",
        "nist-manage": "met",
        "nist-map": "met",
        "nist-measure": "met",
    }
    assert (nist["applicable"], nist["implemented"], nist["percentage"], nist["compliant"]) == (
        4,
        4,
        100,
        True,
    )

    iso = _profile(report, "iso-42001")
    assert iso["level"] == "high"
    assert _statuses(iso) == {
        "iso-a.5": "met",
        "iso-a.6": "met",
        "iso-a.7": "met",
        "iso-a.8": "met",
        "iso-a.9": "met",
        "iso-a.10": "missing",
    }
    assert (iso["applicable"], iso["implemented"], iso["percentage"], iso["compliant"]) == (6, 5, 83, False)

    controls = {control["id"]: control for control in eu["controls"]}
    # Logging is claimed by the card and observed at runtime: both are on record.
    assert controls["eu-art-12"]["evidence"] == [
        {"source": "card", "detail": "constraints.monitoring.logAllDecisions: true"},
        {"source": "runtime", "detail": "40 policy decision(s) logged (policy.checked)"},
    ]
    # Approvals are listed in a fixed order, whatever the card's.
    assert controls["eu-art-9"]["evidence"] == [
        {
            "source": "card",
            "detail": "governance.approvals: 2 (ciso Jane Doe 2025-01-15; dpo Li Wei 2025-01-14)",
        }
    ]
    assert controls["eu-art-14"]["evidence"][1] == {
        "source": "runtime",
        "detail": "kill switch triggered 1 time(s), acknowledged 1 time(s)",
    }
    assert controls["eu-art-11"]["evidence"] == [
        {"source": "card", "detail": "intent linked to FIN-1234 with a business justification"}
    ]
    assert controls["eu-art-10"]["evidence"] == []

    # Violations are listed, not held against a control.
    assert report["findings"] == [
        {"id": "policy.violated", "detail": "3 policy violation(s) recorded (policy.violated): for review"}
    ]
    assert report["runtime"]["decisions_logged"] == 40
    assert report["compliant"] is False


def test_the_same_card_without_runtime_evidence_relies_on_its_claims_only() -> None:
    report = status(_card(), NOTHING_OBSERVED, generated_at=GENERATED_AT)
    # The card says nothing about a kill switch and nothing was observed: MANAGE has no evidence.
    assert _statuses(_profile(report, "nist-ai-rmf"))["nist-manage"] == "missing"
    assert _profile(report, "nist-ai-rmf")["percentage"] == 75
    eu = {control["id"]: control for control in _profile(report, "eu-ai-act")["controls"]}
    assert eu["eu-art-12"]["evidence"] == [
        {"source": "card", "detail": "constraints.monitoring.logAllDecisions: true"}
    ]
    assert [finding["id"] for finding in report["findings"]] == ["runtime.no_live_agents"]


def test_runtime_evidence_meets_controls_the_card_does_not_claim() -> None:
    card = _card(governance={"status": "draft"}, constraints={}, runtime={"kill_switch": {"enabled": True}})
    evidence = RuntimeEvidence(
        agents_live=1,
        decisions_logged=5,
        violations=0,
        kill_switch_triggers=0,
        kill_switch_acknowledged=0,
        golden_thread_verified=True,
        human_oversight=True,
        last_event_at="2025-03-01T10:00:00Z",
    )
    report = status(card, evidence, generated_at=GENERATED_AT)
    eu = {control["id"]: control for control in _profile(report, "eu-ai-act")["controls"]}
    assert eu["eu-art-9"]["evidence"] == [
        {"source": "runtime", "detail": "Golden Thread verified for every live agent"}
    ]
    assert eu["eu-art-12"]["evidence"] == [
        {"source": "runtime", "detail": "5 policy decision(s) logged (policy.checked)"}
    ]
    assert eu["eu-art-14"]["evidence"] == [
        {"source": "card", "detail": "runtime.kill_switch.enabled: true"},
        {"source": "runtime", "detail": "human approval is required (tenant policy or card constraints)"},
    ]
    iso = _statuses(_profile(report, "iso-42001"))
    # Impact assessment needs an approval; observed decisions are not a record of the data (A.7).
    assert iso["iso-a.5"] == "missing"
    assert iso["iso-a.7"] == "missing"
    assert iso["iso-a.9"] == "met"
    assert report["findings"] == []


def test_unacknowledged_kill_switch_and_unverified_golden_thread_are_findings() -> None:
    evidence = RuntimeEvidence(
        agents_live=3,
        decisions_logged=0,
        violations=0,
        kill_switch_triggers=2,
        kill_switch_acknowledged=0,
        golden_thread_verified=False,
        human_oversight=False,
        last_event_at=None,
    )
    report = status(_card(constraints={}), evidence, generated_at=GENERATED_AT)
    assert _statuses(_profile(report, "nist-ai-rmf"))["nist-manage"] == "missing"
    assert report["findings"] == [
        {"id": "golden_thread.unverified", "detail": "a live agent's Golden Thread is not verified"},
        {
            "id": "kill_switch.unacknowledged",
            "detail": "kill switch triggered 2 time(s), acknowledged only 0 time(s)",
        },
    ]


def test_minimal_card_has_only_nist_govern() -> None:
    card = _card("minimal", classification={"riskLevel": "minimal", "riskFactors": {}}, intent={})
    report = status(card, NOTHING_OBSERVED, generated_at=GENERATED_AT)
    assert [part["profile"] for part in report["profiles"]] == ["iso-42001", "nist-ai-rmf"]

    nist = _profile(report, "nist-ai-rmf")
    assert nist["level"] == "minimal"
    assert _statuses(nist) == {"nist-govern": "met"}
    assert (nist["applicable"], nist["implemented"], nist["percentage"], nist["compliant"]) == (
        1,
        1,
        100,
        True,
    )

    iso = _profile(report, "iso-42001")
    assert iso["level"] == "low"
    assert _statuses(iso) == {"iso-a.5": "met", "iso-a.6": "missing", "iso-a.9": "met"}
    assert iso["percentage"] == 67

    unapproved = _card("minimal", classification={"riskLevel": "minimal"}, governance={"status": "draft"})
    nist = _profile(status(unapproved, NOTHING_OBSERVED, generated_at=GENERATED_AT), "nist-ai-rmf")
    assert (nist["implemented"], nist["percentage"], nist["compliant"]) == (0, 0, False)


def test_limited_eu_card_needs_articles_13_and_50() -> None:
    report = status(_card("limited"), NOTHING_OBSERVED, generated_at=GENERATED_AT)
    eu = _profile(report, "eu-ai-act")
    assert eu["level"] == "limited"
    assert _statuses(eu) == {"eu-art-13": "met", "eu-art-50": "missing"}
    assert eu["percentage"] == 50
    assert _profile(report, "nist-ai-rmf")["level"] == "low"
    assert _profile(report, "iso-42001")["level"] == "medium"


def test_unacceptable_card_is_prohibited_under_the_eu_ai_act() -> None:
    report = status(_card("unacceptable"), OBSERVED, generated_at=GENERATED_AT)
    eu = _profile(report, "eu-ai-act")
    assert eu["level"] == "unacceptable"
    assert eu["prohibited"] is True
    assert eu["controls"] == []
    # No control applies, so the percentage is the formula's 100, but nothing makes it compliant.
    assert (eu["applicable"], eu["percentage"], eu["compliant"]) == (0, 100, False)
    assert {
        "id": "eu-ai-act.prohibited",
        "detail": "risk level unacceptable: a prohibited practice under EU AI Act (Art. 5)",
    } in report["findings"]
    assert _profile(report, "nist-ai-rmf")["level"] == "critical"
    assert _profile(report, "iso-42001")["level"] == "critical"
    assert report["compliant"] is False


@pytest.mark.parametrize(
    ("risk_level", "category"),
    [
        ("minimal", "neither"),
        ("limited", "neither"),
        ("high", "rights-impacting"),
        ("unacceptable", "safety-impacting"),
    ],
)
def test_profile_override_us_omb_reports_the_category_only(risk_level: str, category: str) -> None:
    report = status(_card(risk_level), OBSERVED, generated_at=GENERATED_AT, profiles=["us-omb-m24"])
    assert report["profiles"] == [
        {
            "profile": "us-omb-m24",
            "name": "US OMB M-24-10",
            "level": category,
            "prohibited": False,
            "applicable": 0,
            "implemented": 0,
            "percentage": 100,
            "compliant": True,
            "controls": [],
        }
    ]
    assert report["compliant"] is True


def test_profile_override_beats_the_card_and_its_jurisdictions() -> None:
    card = _card(
        classification={"riskLevel": "high", "jurisdictions": ["US"]}, compliance={"profiles": ["iso-42001"]}
    )
    assert [part["profile"] for part in status(card, OBSERVED, generated_at=GENERATED_AT)["profiles"]] == [
        "iso-42001"
    ]
    # Ids are matched case-insensitively and counted once; a lone string is one id.
    override = status(
        card, OBSERVED, generated_at=GENERATED_AT, profiles=["EU-AI-Act", "eu-ai-act ", "nist-ai-rmf"]
    )
    assert [part["profile"] for part in override["profiles"]] == ["eu-ai-act", "nist-ai-rmf"]
    single = status(card, OBSERVED, generated_at=GENERATED_AT, profiles="nist-ai-rmf")
    assert [part["profile"] for part in single["profiles"]] == ["nist-ai-rmf"]
    assert status(card, OBSERVED, generated_at=GENERATED_AT, profiles=[])["profiles"] == []


def test_jurisdictions_without_the_eu_leave_the_eu_ai_act_out() -> None:
    card = _card(classification={"riskLevel": "high", "jurisdictions": ["US", "europe"]})
    report = status(card, OBSERVED, generated_at=GENERATED_AT)
    assert [part["profile"] for part in report["profiles"]] == ["iso-42001", "nist-ai-rmf"]


def test_unknown_profile_ids_are_reported_not_errors() -> None:
    card = _card(compliance={"profiles": ["eu-ai-act", "sox-404", "nist-ai-rmf", "SOX-404", ""]})
    report = status(card, OBSERVED, generated_at=GENERATED_AT)
    assert [part["profile"] for part in report["profiles"]] == ["eu-ai-act", "nist-ai-rmf"]
    assert report["unknown_profiles"] == ["SOX-404", "sox-404"]

    only_unknown = status(_card(compliance={"profiles": ["sox-404"]}), OBSERVED, generated_at=GENERATED_AT)
    assert only_unknown["profiles"] == []
    assert only_unknown["unknown_profiles"] == ["sox-404"]
    # Nothing assessed proves nothing.
    assert only_unknown["compliant"] is False


def test_a_malformed_profiles_entry_falls_back_to_derived_profiles_with_a_finding() -> None:
    report = status(_card(compliance={"profiles": {"eu-ai-act": True}}), OBSERVED, generated_at=GENERATED_AT)
    assert [part["profile"] for part in report["profiles"]] == ["eu-ai-act", "iso-42001", "nist-ai-rmf"]
    assert "card.compliance.profiles" in [finding["id"] for finding in report["findings"]]


@pytest.mark.parametrize("risk_level", [None, "", "severe", 3])
def test_a_card_without_a_valid_risk_level_is_refused(risk_level: Any) -> None:
    with pytest.raises(ValueError, match=r"classification\.riskLevel"):
        status(_card(classification={"riskLevel": risk_level}), OBSERVED, generated_at=GENERATED_AT)


def test_determinism_same_inputs_same_bytes_and_hash() -> None:
    first = status(_card(), OBSERVED, generated_at=GENERATED_AT)
    second = status(_card(), OBSERVED, generated_at=GENERATED_AT)
    assert canonical(first) == canonical(second)
    assert report_hash(first) == report_hash(second)
    assert report_hash(first) == "sha256:" + hashlib.sha256(canonical(first)).hexdigest()
    # A filed report, read back from its JSON, still has the same hash.
    assert report_hash(parse(canonical(first))) == report_hash(first)

    # Key order anywhere in the card, and the order of its approvals and jurisdictions, do not matter.
    shuffled = _reversed_keys(_card())
    shuffled["governance"]["approvals"].reverse()
    shuffled["classification"]["jurisdictions"].reverse()
    assert list(shuffled) != list(_card())
    assert canonical(status(shuffled, OBSERVED, generated_at=GENERATED_AT)) == canonical(first)

    # The caller's clock is the only time in the report.
    later = status(_card(), OBSERVED, generated_at="2025-03-03T09:00:00Z")
    assert report_hash(later) != report_hash(first)
    assert {**later, "generated_at": GENERATED_AT} == first


def test_status_does_not_modify_the_card() -> None:
    card = _card()
    before = copy.deepcopy(card)
    status(card, OBSERVED, generated_at=GENERATED_AT)
    assert card == before


def test_catalogue_is_consistent() -> None:
    for profile in PROFILES.values():
        assert set(profile.mapping) == set(RISK_LEVELS)
        assert set(profile.mapping.values()) <= set(profile.levels)
        assert profile.prohibited_at <= set(profile.levels)
        ids = [control.id for control in profile.controls]
        assert len(ids) == len(set(ids))
        for control in profile.controls:
            assert control.applies_at
            assert control.applies_at <= set(profile.levels), control.id
    all_ids = [control.id for profile in PROFILES.values() for control in profile.controls]
    assert len(all_ids) == len(set(all_ids))


@pytest.mark.parametrize(
    ("implemented", "applicable", "percentage"),
    [(0, 0, 100), (0, 4, 0), (1, 8, 13), (3, 8, 38), (5, 7, 71), (2, 3, 67), (4, 4, 100)],
)
def test_percentage_rounds_halves_up_like_the_reference(
    implemented: int, applicable: int, percentage: int
) -> None:
    assert compliance._percentage(implemented, applicable) == percentage


# A recorded scenario: what the server's event log holds for one card's agents over a kill-switch drill.
RECORDED_EVENTS: list[dict[str, Any]] = [
    {"event_type": "agent.registered", "timestamp": "2025-03-01T09:59:00.000000Z", "agent_id": "agt-1"},
    {"event_type": "policy.checked", "timestamp": "2025-03-01T10:00:00.000000Z", "agent_id": "agt-1"},
    {"event_type": "policy.checked", "timestamp": "2025-03-01T10:00:01.000000Z", "agent_id": "agt-2"},
    {"event_type": "policy.violated", "timestamp": "2025-03-01T10:00:02.000000Z", "agent_id": "agt-2"},
    {
        "event_type": "policy.decisions_aggregated",
        "timestamp": "2025-03-01T10:01:00.000000Z",
        "agent_id": None,
        "data": {"minute": "2025-03-01T10:00Z", "count": 9, "by_agent": {"agt-1": 4, "agt-2": 2, "agt-9": 3}},
    },
    {"event_type": "kill_switch.triggered", "timestamp": "2025-03-01T10:05:00.000000Z", "agent_id": "agt-1"},
    # An offset, not Z: compared as an instant, this is the newest counted event (10:05:00.25Z).
    {
        "event_type": "kill_switch.acknowledged",
        "timestamp": "2025-03-01T12:05:00.250000+02:00",
        "agent_id": "agt-1",
    },
    # Later, but not evidence of anything this module judges.
    {"event_type": "tool.completed", "timestamp": "2025-03-01T11:00:00.000000Z", "agent_id": "agt-1"},
]


def test_recorded_scenario() -> None:
    evidence = evidence_from_events(
        RECORDED_EVENTS,
        agents_live=2,
        golden_thread_verified=True,
        human_oversight=True,
        agent_ids=["agt-1", "agt-2"],
    )
    assert evidence == RuntimeEvidence(
        agents_live=2,
        decisions_logged=8,
        violations=1,
        kill_switch_triggers=1,
        kill_switch_acknowledged=1,
        golden_thread_verified=True,
        human_oversight=True,
        last_event_at="2025-03-01T12:05:00.250000+02:00",
    )
    # Without agent ids the caller vouches for every event: the aggregate counts whole.
    assert (
        evidence_from_events(
            RECORDED_EVENTS, agents_live=2, golden_thread_verified=None, human_oversight=False
        ).decisions_logged
        == 11
    )

    # The order the rows come in changes nothing.
    shuffled = list(RECORDED_EVENTS)
    random.Random(7).shuffle(shuffled)
    assert (
        evidence_from_events(
            shuffled,
            agents_live=2,
            golden_thread_verified=True,
            human_oversight=True,
            agent_ids=["agt-2", "agt-1"],
        )
        == evidence
    )

    report = status(_card(constraints={}), evidence, generated_at=GENERATED_AT)
    eu = {control["id"]: control for control in _profile(report, "eu-ai-act")["controls"]}
    assert eu["eu-art-9"]["evidence"] == [
        {
            "source": "card",
            "detail": "governance.approvals: 2 (ciso Jane Doe 2025-01-15; dpo Li Wei 2025-01-14)",
        },
        {"source": "runtime", "detail": "Golden Thread verified for every live agent"},
    ]
    assert eu["eu-art-12"]["evidence"] == [
        {"source": "runtime", "detail": "8 policy decision(s) logged (policy.checked)"}
    ]
    assert [item["source"] for item in eu["eu-art-14"]["evidence"]] == ["card", "runtime", "runtime"]
    # The card claims no logging, so the ISO record of data stays missing however much was observed.
    assert _statuses(_profile(report, "iso-42001"))["iso-a.7"] == "missing"
    assert _profile(report, "nist-ai-rmf")["compliant"] is True
    assert report["findings"] == [
        {"id": "policy.violated", "detail": "1 policy violation(s) recorded (policy.violated): for review"}
    ]
    assert report["runtime"]["last_event_at"] == "2025-03-01T12:05:00.250000+02:00"


def test_evidence_from_events_with_datetimes_and_no_events() -> None:
    empty = evidence_from_events([], agents_live=0, golden_thread_verified=None, human_oversight=False)
    assert empty == NOTHING_OBSERVED
    rows = [
        {"event_type": "policy.checked", "timestamp": datetime(2025, 3, 1, 10, 0, tzinfo=UTC)},
        {"event_type": "policy.checked", "timestamp": datetime(2025, 3, 1, 11, 30, 0, 5)},
    ]
    evidence = evidence_from_events(rows, agents_live=1, golden_thread_verified=None, human_oversight=False)
    assert evidence.decisions_logged == 2
    assert evidence.last_event_at == "2025-03-01T11:30:00.000005Z"


def test_html_report_escapes_card_text_and_lists_every_control() -> None:
    card = _card(
        name="<script>alert('pwned')</script>",
        governance={
            "status": "approved",
            "approvals": [{"role": "ciso", "name": '<img src=x onerror="steal()">', "date": "2025-01-15"}],
        },
        compliance={"profiles": ["eu-ai-act", "nist-ai-rmf", "iso-42001", "us-omb-m24", "<b>bogus</b>"]},
    )
    report = status(card, OBSERVED, generated_at=GENERATED_AT)
    page = html(report)

    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "<img" not in page
    assert "&lt;img src=x onerror=&quot;steal()&quot;&gt;" in page
    assert "<b>bogus</b>" not in page
    assert "&lt;b&gt;bogus&lt;/b&gt;" in page

    for part in report["profiles"]:
        assert part["profile"] in page
        for control in part["controls"]:
            assert f"<code>{control['id']}</code>" in page
    assert report_hash(report) in page
    assert GENERATED_AT in page
    for finding in report["findings"]:
        assert finding["id"] in page

    # Standalone and printable: no scripts, nothing fetched, print rules present.
    assert "@media print" in page
    for external in ("http://", "https://", "<link", 'src="', "url("):
        assert external not in page
    assert html(copy.deepcopy(report)) == page


def test_html_shows_prohibition_and_empty_sections() -> None:
    report = status(
        _card("unacceptable"), NOTHING_OBSERVED, generated_at=GENERATED_AT, profiles=["eu-ai-act"]
    )
    page = html(report)
    assert "Prohibited at this level" in page
    assert "No controls apply at this level." in page
    assert "Not compliant" in page
