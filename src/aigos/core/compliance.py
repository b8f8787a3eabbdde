"""Compliance status of one AIGRC asset card against the profiles it declares, with evidence.

A profile (EU AI Act, NIST AI RMF, ISO/IEC 42001, US OMB M-24) maps the card's risk level to one of its own
levels and lists the controls that apply at that level. A control is *met* when some evidence of the kind it
needs is present: claims the card makes (approvals, a linked intent, decision logging: what the AIGRC
reference CLI looks at) and what the event log observed of the card's agents (decisions logged, kill-switch
drills acknowledged, human approval configured, verified Golden Threads), which turns a claim into a fact.

Pure: the caller reads the card and counts events (``evidence_from_events``); nothing here touches a clock,
a file or a database, and the same inputs give the same report, byte for byte, under ``canonical``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from aigos.core.canonical import canonical

#: The card's risk levels (``classification.riskLevel``), least to most severe.
RISK_LEVELS = ("minimal", "limited", "high", "unacceptable")

# Kinds of evidence a control needs. A rule (``_RULES``) provides kinds, a control needs one: adding a control
# of an existing kind needs no new rule. Kinds no rule provides (data governance, robustness, disclosure to
# users, third parties) stay missing until a card or runtime signal for them exists: AIGOS cannot infer them.
GOVERNANCE = "governance"
OVERSIGHT = "oversight"
IMPACT_ASSESSMENT = "impact-assessment"
USE = "use"
MANAGE = "manage"
DOCUMENTATION = "documentation"
LOGGING = "logging"
RECORDS = "records"
DATA_GOVERNANCE = "data-governance"
ROBUSTNESS = "robustness"
DISCLOSURE = "disclosure"
THIRD_PARTY = "third-party"


@dataclass(frozen=True)
class Control:
    """One control of a profile: the profile levels it applies at and the kind of evidence that meets it."""

    id: str
    title: str
    applies_at: frozenset[str]
    evidence: str


@dataclass(frozen=True)
class Profile:
    """A compliance framework: its levels, how card risk levels map onto them, and its controls."""

    id: str
    name: str
    levels: tuple[str, ...]
    #: Card ``classification.riskLevel`` to this profile's level.
    mapping: Mapping[str, str]
    controls: tuple[Control, ...]
    #: Levels at which the system may not be deployed at all, whatever the evidence, and the provision.
    prohibited_at: frozenset[str] = frozenset()
    prohibited_by: str = ""


def _from(levels: tuple[str, ...], lowest: str) -> frozenset[str]:
    """``lowest`` and every level above it."""
    return frozenset(levels[levels.index(lowest) :])


_EU_LEVELS = ("minimal", "limited", "high", "unacceptable")
_NIST_LEVELS = ("minimal", "low", "high", "critical")
_ISO_LEVELS = ("low", "medium", "high", "critical")
_OMB_LEVELS = ("neither", "rights-impacting", "safety-impacting")

_EU_HIGH = frozenset({"high"})
_EU_LIMITED = frozenset({"limited"})
_NIST_ALL = frozenset(_NIST_LEVELS)
_NIST_LOW_UP = _from(_NIST_LEVELS, "low")
_ISO_ALL = frozenset(_ISO_LEVELS)
_ISO_MEDIUM_UP = _from(_ISO_LEVELS, "medium")
_ISO_HIGH_UP = _from(_ISO_LEVELS, "high")

EU_AI_ACT = Profile(
    id="eu-ai-act",
    name="EU AI Act",
    levels=_EU_LEVELS,
    mapping=MappingProxyType({level: level for level in RISK_LEVELS}),
    controls=(
        Control("eu-art-9", "Art. 9 Risk management system", _EU_HIGH, GOVERNANCE),
        Control("eu-art-10", "Art. 10 Data and data governance", _EU_HIGH, DATA_GOVERNANCE),
        Control("eu-art-11", "Art. 11 Technical documentation", _EU_HIGH, DOCUMENTATION),
        Control("eu-art-12", "Art. 12 Record-keeping", _EU_HIGH, LOGGING),
        Control("eu-art-13", "Art. 13 Transparency to deployers", _EU_HIGH | _EU_LIMITED, DOCUMENTATION),
        Control("eu-art-14", "Art. 14 Human oversight", _EU_HIGH, OVERSIGHT),
        Control("eu-art-15", "Art. 15 Accuracy, robustness and cybersecurity", _EU_HIGH, ROBUSTNESS),
        Control(
            "eu-art-50", "Art. 50 Transparency obligations for certain AI systems", _EU_LIMITED, DISCLOSURE
        ),
    ),
    # Prohibited practices: no control can make such a system compliant.
    prohibited_at=frozenset({"unacceptable"}),
    prohibited_by="Art. 5",
)

NIST_AI_RMF = Profile(
    id="nist-ai-rmf",
    name="NIST AI RMF 1.0",
    levels=_NIST_LEVELS,
    mapping=MappingProxyType(
        {"minimal": "minimal", "limited": "low", "high": "high", "unacceptable": "critical"}
    ),
    controls=(
        Control("nist-govern", "GOVERN: culture and structure of AI risk management", _NIST_ALL, GOVERNANCE),
        Control("nist-map", "MAP: context and risks are established", _NIST_LOW_UP, DOCUMENTATION),
        Control("nist-measure", "MEASURE: risks are assessed and tracked", _NIST_LOW_UP, LOGGING),
        Control("nist-manage", "MANAGE: risks are prioritised and acted upon", _NIST_LOW_UP, MANAGE),
    ),
)

# Which Annex A clauses apply at which level is AIGOS's reading, not the standard's (ISO/IEC 42001 has no risk
# tiers): impact assessment, life cycle and use at every level; data and information for interested parties
# once the system is more than low risk; third-party relationships for high risk and above.
ISO_42001 = Profile(
    id="iso-42001",
    name="ISO/IEC 42001:2023",
    levels=_ISO_LEVELS,
    mapping=MappingProxyType(
        {"minimal": "low", "limited": "medium", "high": "high", "unacceptable": "critical"}
    ),
    controls=(
        Control("iso-a.5", "A.5 Assessing impacts of AI systems", _ISO_ALL, IMPACT_ASSESSMENT),
        Control("iso-a.6", "A.6 AI system life cycle", _ISO_ALL, DOCUMENTATION),
        Control("iso-a.7", "A.7 Data for AI systems", _ISO_MEDIUM_UP, RECORDS),
        Control("iso-a.8", "A.8 Information for interested parties", _ISO_MEDIUM_UP, DOCUMENTATION),
        Control("iso-a.9", "A.9 Use of AI systems", _ISO_ALL, USE),
        Control("iso-a.10", "A.10 Third-party and customer relationships", _ISO_HIGH_UP, THIRD_PARTY),
    ),
)

# The memoranda categorise systems; their minimum practices are not modelled here (no card or runtime signal
# maps onto them yet), so the report carries the category only.
US_OMB_M24 = Profile(
    id="us-omb-m24",
    name="US OMB M-24-10",
    levels=_OMB_LEVELS,
    mapping=MappingProxyType(
        {
            "minimal": "neither",
            "limited": "neither",
            "high": "rights-impacting",
            "unacceptable": "safety-impacting",
        }
    ),
    controls=(),
)

#: The known profiles by id.
PROFILES: Mapping[str, Profile] = MappingProxyType(
    {profile.id: profile for profile in (EU_AI_ACT, NIST_AI_RMF, ISO_42001, US_OMB_M24)}
)

#: Profiles every card is assessed against when it names none; EU AI Act is added for EU jurisdictions.
DEFAULT_PROFILES = ("iso-42001", "nist-ai-rmf")


@dataclass(frozen=True)
class RuntimeEvidence:
    """What the event log observed for the card's agents (the caller counts it; this module only judges)."""

    #: Agents registered against the card and not terminated.
    agents_live: int
    #: ``policy.checked`` events for those agents.
    decisions_logged: int
    #: ``policy.violated`` events.
    violations: int
    #: ``kill_switch.triggered`` events naming those agents (or their tenant-wide fleet).
    kill_switch_triggers: int
    #: ``kill_switch.acknowledged`` events.
    kill_switch_acknowledged: int
    #: None: no agent states one; True: every live agent's is verified.
    golden_thread_verified: bool | None
    #: The tenant requires human approval (a policy), or the card lists ``constraints.humanApprovalRequired``.
    human_oversight: bool
    #: ISO-8601 time of the newest event counted, or None.
    last_event_at: str | None


# ---------------------------------------------------------------------------------------------------------
# Evidence rules: each looks at the card or the runtime evidence and, when it holds, says why in one line.


def _get(card: Mapping[str, Any], *path: str) -> Any:
    """``card[path[0]][path[1]]...``, or None where a step is missing or not an object."""
    value: Any = card
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _text(value: Any) -> str:
    """A card scalar as text (cards come from YAML: a date may arrive as something other than a string)."""
    return "" if value is None else str(value).strip()


def _card_approvals(card: Mapping[str, Any], _: RuntimeEvidence) -> str | None:
    approvals = _get(card, "governance", "approvals")
    if not isinstance(approvals, list) or not approvals:
        return None
    described = []
    for approval in approvals:
        if isinstance(approval, Mapping):
            parts = [_text(approval.get(key)) for key in ("role", "name", "date")]
            described.append(" ".join(part for part in parts if part) or "(unnamed)")
        else:
            described.append(_text(approval) or "(unnamed)")
    # Sorted: the card's list order carries no meaning and must not change the report's hash.
    return f"governance.approvals: {len(approvals)} ({'; '.join(sorted(described))})"


def _card_intent(card: Mapping[str, Any], _: RuntimeEvidence) -> str | None:
    intent = _get(card, "intent")
    if not isinstance(intent, Mapping) or intent.get("linked") is not True:
        return None
    if not _text(intent.get("businessJustification")):
        return None
    ticket = _text(intent.get("ticketId"))
    return f"intent linked{f' to {ticket}' if ticket else ''} with a business justification"


def _card_logging(card: Mapping[str, Any], _: RuntimeEvidence) -> str | None:
    if _get(card, "constraints", "monitoring", "logAllDecisions") is not True:
        return None
    return "constraints.monitoring.logAllDecisions: true"


def _card_kill_switch(card: Mapping[str, Any], _: RuntimeEvidence) -> str | None:
    if _get(card, "runtime", "kill_switch", "enabled") is not True:
        return None
    channel = _text(_get(card, "runtime", "kill_switch", "channel"))
    return f"runtime.kill_switch.enabled: true{f' (channel {channel})' if channel else ''}"


def _observed_decisions(_: Mapping[str, Any], evidence: RuntimeEvidence) -> str | None:
    if evidence.decisions_logged <= 0:
        return None
    return f"{evidence.decisions_logged} policy decision(s) logged (policy.checked)"


def _observed_kill_switch(_: Mapping[str, Any], evidence: RuntimeEvidence) -> str | None:
    # A trigger nobody acknowledged shows the switch was pulled, not that it works: that is a finding.
    if evidence.kill_switch_triggers <= 0 or evidence.kill_switch_acknowledged <= 0:
        return None
    return (
        f"kill switch triggered {evidence.kill_switch_triggers} time(s), "
        f"acknowledged {evidence.kill_switch_acknowledged} time(s)"
    )


def _observed_human_oversight(_: Mapping[str, Any], evidence: RuntimeEvidence) -> str | None:
    return (
        "human approval is required (tenant policy or card constraints)" if evidence.human_oversight else None
    )


def _observed_golden_thread(_: Mapping[str, Any], evidence: RuntimeEvidence) -> str | None:
    if evidence.golden_thread_verified is not True:
        return None
    return "Golden Thread verified for every live agent"


@dataclass(frozen=True)
class _Rule:
    source: str
    provides: frozenset[str]
    holds: Callable[[Mapping[str, Any], RuntimeEvidence], str | None]


_RULES = (
    # What the AIGRC reference CLI reads from the card.
    _Rule("card", frozenset({GOVERNANCE, OVERSIGHT, IMPACT_ASSESSMENT, USE}), _card_approvals),
    _Rule("card", frozenset({DOCUMENTATION}), _card_intent),
    _Rule("card", frozenset({LOGGING, RECORDS}), _card_logging),
    _Rule("card", frozenset({OVERSIGHT, MANAGE, USE}), _card_kill_switch),
    # What the event log observed: AIGOS's addition.
    _Rule("runtime", frozenset({LOGGING}), _observed_decisions),
    _Rule("runtime", frozenset({OVERSIGHT, MANAGE, USE}), _observed_kill_switch),
    _Rule("runtime", frozenset({OVERSIGHT}), _observed_human_oversight),
    _Rule("runtime", frozenset({GOVERNANCE}), _observed_golden_thread),
)


# ---------------------------------------------------------------------------------------------------------
# The report.


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders ``eu-art-9`` before ``eu-art-10`` and ``iso-a.5`` before ``iso-a.10``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|\D+", text))


def _percentage(implemented: int, applicable: int) -> int:
    """``round(100 * implemented / applicable)``, halves rounded up as the reference's ``Math.round`` does
    (Python's ``round`` rounds halves to even: 1 of 8 would be 12 here and 13 there)."""
    if applicable == 0:
        return 100
    return (200 * implemented + applicable) // (2 * applicable)


def _declared_profiles(card: Mapping[str, Any], findings: list[dict[str, str]]) -> list[str]:
    """The profile ids the card declares, or those derived from its jurisdictions."""
    declared = _get(card, "compliance", "profiles")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        return [_text(item) for item in declared]
    if declared is not None:
        findings.append(
            {
                "id": "card.compliance.profiles",
                "detail": "compliance.profiles is not a list: profiles derived instead",
            }
        )
    jurisdictions = _get(card, "classification", "jurisdictions")
    derived = list(DEFAULT_PROFILES)
    if isinstance(jurisdictions, list) and any(_text(item).upper() == "EU" for item in jurisdictions):
        derived.append(EU_AI_ACT.id)
    return derived


def _assess(profile: Profile, risk_level: str, kinds: Mapping[str, list[dict[str, str]]]) -> dict[str, Any]:
    """One profile's part of the report."""
    level = profile.mapping[risk_level]
    prohibited = level in profile.prohibited_at
    controls = []
    for control in sorted(profile.controls, key=lambda c: _natural(c.id)):
        if level not in control.applies_at:
            continue
        evidence = kinds.get(control.evidence, [])
        controls.append(
            {
                "id": control.id,
                "title": control.title,
                "status": "met" if evidence else "missing",
                "evidence": list(evidence),
            }
        )
    implemented = sum(1 for control in controls if control["status"] == "met")
    percentage = _percentage(implemented, len(controls))
    return {
        "profile": profile.id,
        "name": profile.name,
        "level": level,
        "prohibited": prohibited,
        "applicable": len(controls),
        "implemented": implemented,
        "percentage": percentage,
        "compliant": percentage == 100 and not prohibited,
        "controls": controls,
    }


def _runtime_findings(evidence: RuntimeEvidence) -> list[dict[str, str]]:
    findings = []
    if evidence.violations > 0:
        findings.append(
            {
                "id": "policy.violated",
                "detail": f"{evidence.violations} policy violation(s) recorded (policy.violated): for review",
            }
        )
    if evidence.kill_switch_triggers > evidence.kill_switch_acknowledged:
        findings.append(
            {
                "id": "kill_switch.unacknowledged",
                "detail": (
                    f"kill switch triggered {evidence.kill_switch_triggers} time(s), "
                    f"acknowledged only {evidence.kill_switch_acknowledged} time(s)"
                ),
            }
        )
    if evidence.golden_thread_verified is False:
        findings.append(
            {"id": "golden_thread.unverified", "detail": "a live agent's Golden Thread is not verified"}
        )
    if evidence.agents_live == 0:
        findings.append(
            {"id": "runtime.no_live_agents", "detail": "no live agent: nothing was observed at runtime"}
        )
    return findings


def status(
    card: Mapping[str, Any],
    evidence: RuntimeEvidence,
    *,
    generated_at: str,
    profiles: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The compliance report of ``card``: per profile, the controls that apply and whether each is met.

    Profiles are ``profiles`` if given, else the card's ``compliance.profiles``, else ISO 42001 and NIST AI
    RMF, plus EU AI Act when ``classification.jurisdictions`` names the EU. Ids are matched
    case-insensitively; unknown ones are listed under ``unknown_profiles``. ``generated_at`` is the caller's
    clock (this module reads none). Raises ``ValueError`` when the card has no valid
    ``classification.riskLevel``: without it nothing can be mapped.
    """
    risk_level = _text(_get(card, "classification", "riskLevel")).lower()
    if risk_level not in RISK_LEVELS:
        raise ValueError(f"classification.riskLevel: expected one of {', '.join(RISK_LEVELS)}")

    findings: list[dict[str, str]] = []
    if profiles is None:
        requested = _declared_profiles(card, findings)
    else:
        # A lone string is one id, not a sequence of one-letter ids.
        requested = [profiles] if isinstance(profiles, str) else list(profiles)
    known: set[str] = set()
    unknown: set[str] = set()
    for given in requested:
        text = _text(given)
        if text.lower() in PROFILES:
            known.add(text.lower())
        elif text:
            unknown.add(text)

    # Evidence by the kind it provides, each list sorted so the report does not depend on the rules' order.
    kinds: dict[str, list[dict[str, str]]] = {}
    for rule in _RULES:
        detail = rule.holds(card, evidence)
        if detail is not None:
            for kind in rule.provides:
                kinds.setdefault(kind, []).append({"source": rule.source, "detail": detail})
    for items in kinds.values():
        items.sort(key=lambda item: (item["source"], item["detail"]))

    assessed = [_assess(PROFILES[profile_id], risk_level, kinds) for profile_id in sorted(known)]
    for part in assessed:
        profile = PROFILES[part["profile"]]
        if part["prohibited"]:
            findings.append(
                {
                    "id": f"{part['profile']}.prohibited",
                    "detail": (
                        f"risk level {risk_level}: a prohibited practice under {profile.name} "
                        f"({profile.prohibited_by})"
                    ),
                }
            )
    findings.extend(_runtime_findings(evidence))
    findings.sort(key=lambda item: (item["id"], item["detail"]))

    asset_id, asset_name = _get(card, "id"), _get(card, "name")
    return {
        "asset_id": None if asset_id is None else _text(asset_id),
        "asset_name": None if asset_name is None else _text(asset_name),
        "risk_level": risk_level,
        "generated_at": generated_at,
        "profiles": assessed,
        "unknown_profiles": sorted(unknown),
        "findings": findings,
        "runtime": dataclasses.asdict(evidence),
        # Nothing assessed proves nothing: a card naming only unknown profiles is not compliant.
        "compliant": bool(assessed) and all(part["compliant"] for part in assessed),
    }


def report_hash(report: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the report's canonical JSON, to check a filed report later."""
    return "sha256:" + hashlib.sha256(canonical(report)).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Counting the event log.

_CHECKED = "policy.checked"
_VIOLATED = "policy.violated"
_TRIGGERED = "kill_switch.triggered"
_ACKNOWLEDGED = "kill_switch.acknowledged"
#: Allowed decisions the audit log folded into one per-minute entry (``data.count``, ``data.by_agent``).
_AGGREGATED = "policy.decisions_aggregated"


def _instant(value: Any) -> tuple[datetime, str] | None:
    """An event's timestamp as a comparable instant and the text to report, or None when absent."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        return moment, moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = str(value).strip()
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment, text


def _count(value: Any) -> int:
    """A count from an aggregated entry's data; anything but a positive integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def evidence_from_events(
    events: Iterable[Mapping[str, Any]],
    *,
    agents_live: int,
    golden_thread_verified: bool | None,
    human_oversight: bool,
    agent_ids: Collection[str] | None = None,
) -> RuntimeEvidence:
    """Count the card's events by ``event_type`` into ``RuntimeEvidence``; ``last_event_at`` is the newest
    ``timestamp`` (compared as instants, reported as given; a ``datetime`` is written in UTC with ``Z``).

    Allowed decisions may sit in ``policy.decisions_aggregated`` entries, which belong to no single agent:
    with ``agent_ids`` only those agents' share (``data.by_agent``) counts, without it the whole
    ``data.count`` (the caller then vouches that every event given is the card's).
    """
    counts = dict.fromkeys((_CHECKED, _VIOLATED, _TRIGGERED, _ACKNOWLEDGED), 0)
    # A set: an agent named twice must not have its decisions counted twice.
    agents = None if agent_ids is None else set(agent_ids)
    newest: tuple[datetime, str] | None = None
    for event in events:
        event_type = event.get("event_type")
        if event_type == _AGGREGATED:
            data = event.get("data")
            data = data if isinstance(data, Mapping) else {}
            if agents is None:
                added = _count(data.get("count"))
            else:
                by_agent = data.get("by_agent")
                by_agent = by_agent if isinstance(by_agent, Mapping) else {}
                added = sum(_count(by_agent.get(agent)) for agent in agents)
            if not added:
                continue
            counts[_CHECKED] += added
        elif isinstance(event_type, str) and event_type in counts:
            counts[event_type] += 1
        else:
            continue
        when = _instant(event.get("timestamp"))
        # Ties on the instant go to the larger text, so the order of the events never matters.
        if when is not None and (newest is None or when > newest):
            newest = when
    return RuntimeEvidence(
        agents_live=agents_live,
        decisions_logged=counts[_CHECKED],
        violations=counts[_VIOLATED],
        kill_switch_triggers=counts[_TRIGGERED],
        kill_switch_acknowledged=counts[_ACKNOWLEDGED],
        golden_thread_verified=golden_thread_verified,
        human_oversight=human_oversight,
        last_event_at=None if newest is None else newest[1],
    )
