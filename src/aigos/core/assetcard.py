"""AIGRC asset cards: read a card's YAML (or JSON), hold it to the schema, hash it.

An asset card describes one AI system: who owns it, what kind of system it is, its risk level and
lifecycle status, the business approval it is linked to (the Golden Thread) and, as an AIGOS extension
under ``runtime.capabilities``, the tools and domains it may use. The schema is the AIGRC TypeScript
reference's; keys it does not know are kept untouched, as AIGRC keeps them, so a card stays valid for
AIGRC's own tools and its content hash covers everything written in it.

YAML is read with the YAML 1.2 core schema, not PyYAML's YAML 1.1 one: ``2025-01-15T10:30:00Z`` stays
text (a datetime would change the Golden Thread hash), ``yes`` and ``on`` stay text, and a number where the
schema wants a string comes back as it was written (``version: 1.10`` is ``"1.10"``, not ``1.1``). The card
is built from the parser's events, not by PyYAML's composer and constructor: an alias is refused before
anything can expand (billion laughs), nesting is bounded before libyaml's recursive composer could
overflow the C stack, and every problem names its place in the card as a JSON pointer.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml

from aigos.core import globs, goldenthread, storable
from aigos.core.agents import Capabilities
from aigos.core.canonical import NotCanonicalizable, canonical
from aigos.core.storable import find_unstorable

#: The label an agent registered against an asset card carries, its value the card's id: the policies a
#: card derives target it by this label.
AGENT_LABEL = "aigrc_asset_card"
MAX_CARD_BYTES = 256 * 1024
#: Nesting, and integers, as far as every stored value may go (``aigos.core.storable``).
MAX_DEPTH = storable.MAX_DEPTH
RISK_LEVELS = ("minimal", "limited", "high", "unacceptable")
STATUSES = ("draft", "linked", "approved", "production", "deprecated", "revoked")
TECHNICAL_TYPES = ("model", "agent", "api_client", "framework", "pipeline")
VERIFICATION_FAILURE_MODES = ("SANDBOX", "FAIL")
PII_PROCESSING = ("yes", "no", "unknown")
#: Patterns in ``runtime.capabilities.allowed_tools`` and in ``allowed_domains``, and characters in one.
MAX_CAPABILITY_PATTERNS = 200
MAX_CAPABILITY_PATTERN = 200


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with a card: where (an RFC 6901 JSON pointer, ``""`` for the whole card) and what."""

    pointer: str
    detail: str

    def __str__(self) -> str:
        return f"{self.pointer}: {self.detail}" if self.pointer else self.detail


class CardInvalid(ValueError):
    """The card does not parse or breaks the schema.

    ``errors`` lists every problem found (not just the first), in the order of the card.
    """

    def __init__(self, errors: list[FieldError], *, filename: str | None = None) -> None:
        self.errors = errors
        self.filename = filename
        prefix = f"{filename}: " if filename else ""
        super().__init__(prefix + "; ".join(map(str, errors)))


@dataclass(frozen=True)
class CardGoldenThread:
    """The card's ``golden_thread``: the approval it is linked to, and the hash and signature over it."""

    ticket_id: str
    approved_by: str
    approved_at: str
    hash: str | None
    signature: str | None


@dataclass(frozen=True)
class AssetCard:
    """A valid card: the whole document as parsed (unknown keys kept) and the fields AIGOS acts on."""

    document: dict[str, Any]
    id: str
    name: str
    version: str
    risk_level: str
    status: str
    golden_thread: CardGoldenThread | None
    capabilities: Capabilities | None
    max_cost_per_request: float | None
    verification_failure_mode: str

    def canonical(self) -> bytes:
        """The document's canonical JSON (``aigos.core.canonical``): what the content hash is over."""
        return canonical(self.document)

    def content_hash(self) -> str:
        """``sha256:`` and the lowercase hex SHA-256 of ``canonical()``: the same for the same content,
        whatever its key order, formatting or syntax (YAML or JSON)."""
        return "sha256:" + hashlib.sha256(self.canonical()).hexdigest()


def parse(text: str | bytes, *, filename: str | None = None) -> AssetCard:
    """Read and validate a card written in YAML (JSON is YAML too).

    Raises ``CardInvalid``: with the pointer ``""`` when the text is not UTF-8, not YAML, larger than
    ``MAX_CARD_BYTES``, more than one document, or not a mapping at the top level; with each field's pointer
    when it breaks the schema. ``filename`` only goes into the error's message.
    """
    try:
        return validate(_load(_decode(text)))
    except CardInvalid as invalid:
        if filename is None:
            raise
        raise CardInvalid(invalid.errors, filename=filename) from None


def validate(document: object) -> AssetCard:
    """Hold an already-parsed card to the schema; ``CardInvalid`` lists every field in error, in order."""
    if not isinstance(document, Mapping):
        raise CardInvalid([FieldError("", f"a card must be a mapping (an object), not {_kind(document)}")])
    errors: list[FieldError] = []
    plain = _CARD(document, "", errors)
    if errors:
        raise CardInvalid(errors)
    assert isinstance(plain, dict)
    # Held to the same rules as every other stored text and number (NUL, nesting): both backends store
    # the card alike, whether it came through the API, the CLI or a sync.
    found = find_unstorable(plain)
    if found is not None:
        pointer = "".join(f"/{_escape(str(part))}" for part in found.path)
        raise CardInvalid([FieldError(pointer, found.reason)])
    try:
        canonical(plain)
    except NotCanonicalizable as exc:
        # What the checks above let through only from Python callers: a string with a lone surrogate.
        raise CardInvalid([FieldError("", f"has no canonical JSON form: {exc}")]) from None
    return _card(plain)


def verify_golden_thread(card: AssetCard) -> goldenthread.Verification | None:
    """Whether the card's Golden Thread hash matches its approval (``None`` when it states no hash)."""
    thread = card.golden_thread
    if thread is None or thread.hash is None:
        return None
    return goldenthread.verify(thread.hash, thread.ticket_id, thread.approved_by, thread.approved_at)


def _card(document: dict[str, Any]) -> AssetCard:
    # ``document`` has passed the schema: every lookup below finds what the schema requires.
    runtime = document.get("runtime", {})
    thread = document.get("golden_thread")
    cost = document.get("constraints", {}).get("runtime", {}).get("maxCostPerRequestUsd")
    return AssetCard(
        document=document,
        id=document["id"],
        name=document["name"],
        version=document.get("version", "1.0.0"),
        risk_level=document["classification"]["riskLevel"],
        status=document["governance"]["status"],
        golden_thread=None
        if thread is None
        else CardGoldenThread(
            ticket_id=thread["ticket_id"],
            approved_by=thread["approved_by"],
            approved_at=thread["approved_at"],
            hash=thread.get("hash"),
            signature=thread.get("signature"),
        ),
        capabilities=_capabilities(runtime.get("capabilities")),
        max_cost_per_request=None if cost is None else float(cost),
        verification_failure_mode=runtime.get("verification_failure_mode", "SANDBOX"),
    )


def _capabilities(section: dict[str, Any] | None) -> Capabilities | None:
    if section is None:
        return None
    budget = section.get("max_budget")
    return Capabilities(
        tools=tuple(section.get("allowed_tools", ())),
        # Host names compare lower-cased everywhere else (policies, agents' own capabilities).
        domains=tuple(domain.lower() for domain in section.get("allowed_domains", ())),
        max_budget=None if budget is None else float(budget),
    )


# -- reading YAML ----------------------------------------------------------------------------------------

# libyaml's parser is several times faster than PyYAML's own; both give the same events, and the values
# are built from those events here, so neither's composer nor constructor runs.
_PARSER = yaml.CBaseLoader if yaml.__with_libyaml__ else yaml.BaseLoader
_TAG = "tag:yaml.org,2002:"
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Int(int):
    """An integer read from YAML, with the text it was written as (for a field whose value is text)."""

    text: str


class _Float(float):
    """A float read from YAML, with the text it was written as (``1.10`` is not ``1.1`` as a version)."""

    text: str


_BASES = {"0o": 8, "0x": 16}


def _integer(text: str) -> _Int:
    base = _BASES.get(text[:2])
    number = _Int(text) if base is None else _Int(text[2:], base)
    number.text = text
    return number


def _float(text: str) -> _Float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        number = _Float(-math.inf if text.startswith("-") else math.inf)
    else:
        number = _Float(math.nan if lowered == ".nan" else float(text))
    number.text = text
    return number


#: The YAML 1.2 core schema: what a plain (unquoted, untagged) scalar may be, anything else being a string.
#: No timestamps, no yes/no/on/off, no sexagesimal, binary or underscored numbers: those are YAML 1.1.
_KINDS = {
    "null": r"~|null|Null|NULL|",
    "bool": r"true|True|TRUE|false|False|FALSE",
    "int": r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+",
    "float": r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
}
#: All four in one expression, tried in that order: one match per plain scalar.
_CORE = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in _KINDS.items()))
#: Each alone, for a scalar tagged explicitly (``!!float 1`` is a float, though ``1`` alone is an int).
_KIND = {kind: re.compile(pattern) for kind, pattern in _KINDS.items()}
_CONSTRUCT: dict[str, Callable[[str], object]] = {
    "null": lambda text: None,
    "bool": lambda text: text.lower() == "true",
    "int": _integer,
    "float": _float,
}


def _decode(text: str | bytes) -> str:
    # A str is measured by its UTF-8 bytes too, so the bound is the same whichever a caller passes.
    if isinstance(text, str):
        if len(text) > MAX_CARD_BYTES:
            raise _refused("", f"is larger than {MAX_CARD_BYTES:,} bytes")
        try:
            text = text.encode()
        except UnicodeEncodeError:
            raise _refused("", "is not UTF-8 text") from None
    if len(text) > MAX_CARD_BYTES:
        raise _refused("", f"is larger than {MAX_CARD_BYTES:,} bytes")
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _refused("", f"is not UTF-8 text (byte {exc.start})") from None


@dataclass(slots=True)
class _Open:
    """A mapping or sequence whose end the parser has not reached yet."""

    pointer: str
    value: dict[str, object] | list[object]
    #: In a mapping, the key whose value comes next (``None``: a key comes next).
    key: str | None = None

    def next_pointer(self) -> str:
        if isinstance(self.value, list):
            return f"{self.pointer}/{len(self.value)}"
        return self.pointer if self.key is None else f"{self.pointer}/{_escape(self.key)}"

    def add(self, item: object) -> None:
        if isinstance(self.value, list):
            self.value.append(item)
        else:
            assert self.key is not None
            self.value[self.key] = item
            self.key = None


def _load(text: str) -> object:
    """The single YAML document in ``text`` as Python values; numbers keep their text (``_Int``)."""
    parser = _PARSER(text)
    try:
        documents = _documents(iter(parser.get_event, None))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise _refused("", f"is not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        # A reader error (a control character, say) has no problem mark, only its message.
        raise _refused("", f"is not valid YAML: {exc}") from None
    finally:
        parser.dispose()
    if not documents:
        raise _refused("", "is empty")
    return documents[0]


def _documents(events: Iterable[yaml.Event]) -> list[object]:
    # One loop over the events with a stack of open collections: no recursion, however deep the input.
    # The stream is a list receiving the document, whose pointer is the root's, "".
    documents: list[object] = []
    stream = _Open("", documents)
    stack = [stream]

    def here() -> str:
        # Only spelled out when needed: most events need no pointer.
        return "" if stack[-1] is stream else stack[-1].next_pointer()

    for event in events:
        current = stack[-1]
        awaits_key = current.key is None and isinstance(current.value, dict)
        if isinstance(event, yaml.ScalarEvent):
            try:
                value = _scalar(event)
            except _Unreadable as exc:
                raise _refused(here(), str(exc)) from None
            if not awaits_key:
                current.add(value)
            elif type(value) is not str:
                raise _refused(here(), f"has the key {event.value!r}: quote it, keys are text")
            elif value in current.value:
                raise _refused(f"{here()}/{_escape(value)}", "is a duplicate key")
            else:
                current.key = value
        elif isinstance(event, yaml.CollectionStartEvent):
            pointer = here()
            mapping = isinstance(event, yaml.MappingStartEvent)
            if awaits_key:
                raise _refused(pointer, "has a key that is a mapping or a list: keys are text")
            if event.tag not in (None, "!", _TAG + ("map" if mapping else "seq")):
                raise _refused(pointer, f"has the tag {event.tag}, which a card cannot use")
            if _too_deep(pointer):
                raise _refused(pointer, f"is nested more than {MAX_DEPTH} levels deep")
            opened = _Open(pointer, {} if mapping else [])
            current.add(opened.value)
            stack.append(opened)
        elif isinstance(event, yaml.CollectionEndEvent):
            stack.pop()
        elif isinstance(event, yaml.AliasEvent):
            raise _refused(here(), f"uses the alias *{event.anchor}: aliases are refused")
        elif isinstance(event, yaml.DocumentStartEvent) and documents:
            raise _refused("", "holds more than one YAML document")
    return documents


class _Unreadable(ValueError):
    """A scalar that cannot be read as what its tag says (the caller knows where it is)."""


def _scalar(event: yaml.ScalarEvent) -> object:
    text = event.value
    if _SURROGATE.search(text):
        # Only PyYAML's own parser lets "\ud800" through; no JSON can carry it.
        raise _Unreadable("holds a lone surrogate (\\ud800-\\udfff), which is not text")
    if event.tag is None and event.implicit[0]:
        match = _CORE.fullmatch(text)
        kind = match.lastgroup if match else None
    elif event.tag in (None, "!", _TAG + "str"):
        return text
    else:
        kind = event.tag.removeprefix(_TAG) if event.tag.startswith(_TAG) else ""
        if kind not in _KIND:
            raise _Unreadable(f"has the tag {event.tag}, which a card cannot use")
        if not _KIND[kind].fullmatch(text):
            raise _Unreadable(f"{text!r} is not a {kind}")
    if kind is None:
        return text
    try:
        return _CONSTRUCT[kind](text)
    except ValueError:
        # Python refuses decimal integers of more than 4,300 digits.
        raise _Unreadable("is a number too long to read") from None


def _refused(pointer: str, detail: str) -> CardInvalid:
    return CardInvalid([FieldError(pointer, detail)])


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _too_deep(pointer: str) -> bool:
    # Each "/" of a pointer is one level (a "/" inside a key is escaped as "~1").
    return pointer.count("/") >= MAX_DEPTH


# -- the schema ------------------------------------------------------------------------------------------

#: A check of the value at a pointer: appends what is wrong, returns the value in plain JSON types.
_Check = Callable[[object, str, list[FieldError]], object]
#: A rule on a string: why it is wrong, or None.
_Rule = Callable[[str], str | None]

#: The range orjson, hence ``canonical``, can write.
_JSON_INTEGERS = range(storable.INT64_MIN, storable.INT64_MAX + 1)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _plain(value: object, pointer: str, errors: list[FieldError]) -> object:
    """Any JSON value, in plain types (``_Int`` becomes ``int``): what keys the schema does not know hold."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        # int(): range membership is constant-time only for exact ints (a subclass is searched one by one).
        if int(value) not in _JSON_INTEGERS:
            errors.append(FieldError(pointer, "is an integer outside the signed 64-bit range"))
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            errors.append(FieldError(pointer, "must be a finite number (JSON has no NaN or infinity)"))
        return float(value)
    if isinstance(value, Mapping | list | tuple) and _too_deep(pointer):
        errors.append(FieldError(pointer, f"is nested more than {MAX_DEPTH} levels deep"))
        return None
    if isinstance(value, Mapping):
        return _members(value, {}, pointer, errors)
    if isinstance(value, list | tuple):
        return [_plain(item, f"{pointer}/{index}", errors) for index, item in enumerate(value)]
    errors.append(FieldError(pointer, f"is not a JSON value ({type(value).__name__})"))
    return None


def _members(
    value: Mapping[Any, object], fields: Mapping[str, _Check], pointer: str, errors: list[FieldError]
) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            errors.append(FieldError(pointer, f"has the key {key!r}, which is not a string"))
            continue
        result[str(key)] = fields.get(key, _plain)(item, f"{pointer}/{_escape(key)}", errors)
    return result


def _object(fields: Mapping[str, _Check], required: tuple[str, ...] = ()) -> _Check:
    """An object with these fields (``required`` ones first); other keys are kept as they are."""

    def check(value: object, pointer: str, errors: list[FieldError]) -> object:
        if not isinstance(value, Mapping):
            errors.append(FieldError(pointer, f"must be an object, not {_kind(value)}"))
            return None
        missing = [name for name in required if name not in value]
        errors.extend(FieldError(f"{pointer}/{name}", "is required") for name in missing)
        return _members(value, fields, pointer, errors)

    return check


def _list(item: _Check, *, most: int | None = None) -> _Check:
    """A list whose every entry passes ``item``."""

    def check(value: object, pointer: str, errors: list[FieldError]) -> object:
        if not isinstance(value, list | tuple):
            errors.append(FieldError(pointer, f"must be a list, not {_kind(value)}"))
            return None
        if most is not None and len(value) > most:
            errors.append(FieldError(pointer, f"must have at most {most} entries"))
            return None
        return [item(entry, f"{pointer}/{index}", errors) for index, entry in enumerate(value)]

    return check


def _string(*rules: _Rule, nullable: bool = False) -> _Check:
    """Text, held to ``rules`` (the first broken one is reported).

    A number read from YAML is accepted as the text it was written as: ``version: 1.10`` is ``"1.10"``.
    """

    def check(value: object, pointer: str, errors: list[FieldError]) -> object:
        if value is None and nullable:
            return None
        if isinstance(value, _Int | _Float):
            text = value.text
        elif isinstance(value, str):
            text = str(value)
        else:
            errors.append(FieldError(pointer, f"must be a string, not {_kind(value)}"))
            return None
        problem = next((problem for rule in rules if (problem := rule(text))), None)
        if problem:
            errors.append(FieldError(pointer, problem))
        return text

    return check


def _boolean(value: object, pointer: str, errors: list[FieldError]) -> object:
    if not isinstance(value, bool):
        errors.append(FieldError(pointer, f"must be true or false, not {_kind(value)}"))
    return value


def _number(*, whole: bool) -> _Check:
    """A finite number >= 0; ``whole``: an integer (``3``, not ``3.0``)."""
    wanted = "a whole number >= 0" if whole else "a number >= 0"

    def check(value: object, pointer: str, errors: list[FieldError]) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(FieldError(pointer, f"must be {wanted}, not {_kind(value)}"))
            return None
        if isinstance(value, int):
            valid = 0 <= value < 2**63
        else:
            valid = not whole and math.isfinite(value) and value >= 0
        if not valid:
            errors.append(FieldError(pointer, f"must be {wanted}"))
        return int(value) if isinstance(value, int) else float(value)

    return check


def _length(low: int, high: int | None = None) -> _Rule:
    def rule(text: str) -> str | None:
        if len(text) < low:
            return "must not be empty" if low == 1 else f"must be at least {low} characters"
        if high is not None and len(text) > high:
            return f"must be at most {high} characters"
        return None

    return rule


def _one_of(choices: tuple[str, ...]) -> _Rule:
    return lambda text: None if text in choices else f"must be one of {', '.join(choices)}"


def _matching(pattern: str, detail: str) -> _Rule:
    compiled = re.compile(pattern)
    return lambda text: None if compiled.fullmatch(text) else detail


_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?Z")


def _timestamp(text: str) -> str | None:
    detail = "must be an ISO 8601 UTC date-time ending in Z, as in 2025-01-15T10:30:00Z"
    if not _TIMESTAMP.fullmatch(text):
        return detail
    try:
        # The pattern fixed the shape; this checks the calendar and the clock (no 2025-02-30, no 24:00).
        datetime.fromisoformat(text[:19])
    except ValueError:
        return detail
    return None


# As the server checks an account's email: an address with a dot in its domain, no spaces.
_email = _matching(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}", "must be an email address")
_card_id = _matching(r"aigrc-[0-9]{4}-[0-9a-f]{8}", "must be aigrc-YYYY-, then 8 lowercase hex digits")
_sha256 = _matching(r"sha256:[0-9a-f]{64}", "must be sha256:, then 64 lowercase hex digits")
_signature = _matching(
    r"(?:RSA-SHA256|ECDSA-P256):[A-Za-z0-9+/]+={0,2}", "must be RSA-SHA256: or ECDSA-P256:, then base64"
)
_text = _string()


def _not_blank(text: str) -> str | None:
    # The Golden Thread trims its values: a blank ticket id would link the approval to nothing.
    return None if text.strip() else "must not be blank"


def _patterns(glob_error: _Rule) -> _Check:
    # With the policy engine's own check of a pattern, so one from a card compiles to what it looks like.
    return _list(_string(_length(1, MAX_CAPABILITY_PATTERN), glob_error), most=MAX_CAPABILITY_PATTERNS)


_CARD = _object(
    {
        "id": _string(_card_id),
        "name": _string(_length(1, 100)),
        "version": _string(_length(1)),
        "description": _string(_length(0, 500)),
        "created": _string(_timestamp),
        "updated": _string(_timestamp),
        "ownership": _object(
            {
                "owner": _object(
                    {"name": _string(_length(1)), "email": _string(_email)}, required=("name", "email")
                )
            },
            required=("owner",),
        ),
        "technical": _object(
            {
                "type": _string(_one_of(TECHNICAL_TYPES)),
                "framework": _text,
                "components": _list(
                    _object({"type": _text, "provider": _text, "model": _text}, required=("type",))
                ),
            },
            required=("type",),
        ),
        "classification": _object(
            {
                "riskLevel": _string(_one_of(RISK_LEVELS)),
                "riskFactors": _object(
                    {
                        "autonomousDecisions": _boolean,
                        "customerFacing": _boolean,
                        "toolExecution": _boolean,
                        "externalDataAccess": _boolean,
                        "highStakesDecisions": _boolean,
                        "piiProcessing": _string(_one_of(PII_PROCESSING)),
                    }
                ),
                "jurisdictions": _list(_text),
            },
            required=("riskLevel", "riskFactors"),
        ),
        # The reference lets each of these be null (a card not linked yet writes them so).
        "intent": _object(
            {
                "linked": _boolean,
                "ticketSystem": _string(nullable=True),
                "ticketId": _string(nullable=True),
                "ticketUrl": _string(nullable=True),
                "businessJustification": _string(nullable=True),
                "riskTolerance": _string(nullable=True),
            }
        ),
        "governance": _object(
            {
                "status": _string(_one_of(STATUSES)),
                "approvals": _list(
                    _object(
                        {"role": _text, "name": _text, "email": _string(_email), "date": _text},
                        required=("role", "name", "date"),
                    )
                ),
            },
            required=("status",),
        ),
        "constraints": _object(
            {
                "runtime": _object(
                    {
                        "maxIterations": _number(whole=True),
                        "timeoutSeconds": _number(whole=True),
                        "maxTokensPerRequest": _number(whole=True),
                        "maxCostPerRequestUsd": _number(whole=False),
                    }
                ),
                "humanApprovalRequired": _list(_text),
                "monitoring": _object({"logAllDecisions": _boolean, "logToolInvocations": _boolean}),
            }
        ),
        "golden_thread": _object(
            {
                "ticket_id": _string(_not_blank),
                "approved_by": _string(_email),
                "approved_at": _string(_timestamp),
                "hash": _string(_sha256),
                "signature": _string(_signature),
            },
            required=("ticket_id", "approved_by", "approved_at"),
        ),
        "runtime": _object(
            {
                "verification_failure_mode": _string(_one_of(VERIFICATION_FAILURE_MODES)),
                "kill_switch": _object({"enabled": _boolean, "channel": _text}),
                "capabilities": _object(
                    {
                        "allowed_tools": _patterns(globs.name_glob_error),
                        "allowed_domains": _patterns(globs.domain_glob_error),
                        "max_budget": _number(whole=False),
                    }
                ),
            }
        ),
    },
    required=(
        "id",
        "name",
        "created",
        "updated",
        "ownership",
        "technical",
        "classification",
        "intent",
        "governance",
    ),
)
