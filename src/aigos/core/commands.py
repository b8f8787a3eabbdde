"""Kill-switch commands: the signed form an agent receives, how to verify it, and how to spot a replay.

Pure code shared by the server (which signs) and the SDK (which verifies before it obeys). A command is
signed with Ed25519 over the canonical JSON of every field except ``signature``: tenant, agent, command,
reason, issue time, expiry, a random nonce, the per-agent ``sequence`` and the key that signed it. The
sequence grows by one per agent and command, so a receiver that remembers the highest one it obeyed
detects both a replayed command and one delivered out of order. When a stream opens, the server sends a
signed ``StreamAnchor``: the highest sequence the agent has acknowledged, so a receiver that lost its memory
(a restart) still refuses an old, unexpired command that a newer one superseded.

A tenant-wide trigger, or one for an agent and its descendants, is decided once: one ``FleetCommand``
addressed to a ``scope`` (``{"kind": "tenant"}`` or ``{"kind": "lineage", "root_agent_id": ...}``) instead
of one command per agent. Its signature covers the scope and the tenant, and its ``sequence`` grows by one
per tenant (fleet commands only), so a receiver detects a replayed or reordered one the same way. A
receiver obeys it only if the scope covers it: every agent of its tenant, or the root and its descendants,
which an agent recognises through its ancestors (sent in the stream's signed anchor).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from aigos.core.signing import Signer, verify

ALG = "Ed25519"
COMMANDS = frozenset({"TERMINATE", "PAUSE", "RESUME"})
#: What an agent may report having done with each command: its own result, or that it failed or refused it
#: (a PAUSE is never ``terminated``: an agent terminated earlier refuses the PAUSE instead).
ACK_OUTCOMES: Mapping[str, frozenset[str]] = {
    "TERMINATE": frozenset({"terminated", "failed", "rejected"}),
    "PAUSE": frozenset({"paused", "failed", "rejected"}),
    "RESUME": frozenset({"resumed", "failed", "rejected"}),
}
#: How many command ids a ``ReplayGuard`` remembers; sequences catch anything older.
MAX_REMEMBERED_IDS = 10_000


class CommandRejected(Exception):
    """A command that must not be obeyed; ``code`` says why.

    Codes: ``BAD_SIGNATURE``, ``UNKNOWN_KEY``, ``EXPIRED``, ``WRONG_AGENT``, ``WRONG_TENANT``,
    ``NOT_IN_SCOPE``, ``MALFORMED``, ``REPLAYED``, ``OUT_OF_ORDER``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def format_time(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z`` (the form that is signed, so it must be reproducible)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _as_text(moment: datetime | str) -> str:
    # A signer may pass a time already in its signed form (rebuilt from storage) or as a datetime.
    return moment if isinstance(moment, str) else format_time(moment)


def parse_time(text: str) -> datetime:
    """The inverse of ``format_time`` (any ISO-8601 with an offset is accepted)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamp without offset")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """One TERMINATE, PAUSE or RESUME for one agent, as signed by the server."""

    command_id: str
    tenant_id: str
    agent_id: str
    command: str
    reason: str
    issued_at: str
    expires_at: str
    nonce: str
    sequence: int
    key_id: str
    alg: str
    signature: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SignedCommand:
        """The command in ``data`` (an SSE ``data`` object); ``CommandRejected("MALFORMED")`` if not one."""
        if not isinstance(data, Mapping):
            raise CommandRejected("MALFORMED", "a command is a JSON object")
        values: dict[str, Any] = {}
        for item in fields(cls):
            value = data.get(item.name)
            if item.name == "sequence":
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise CommandRejected("MALFORMED", "sequence must be a positive integer")
            elif not isinstance(value, str):
                raise CommandRejected("MALFORMED", f"{item.name} must be a string")
            values[item.name] = value
        command = cls(**values)
        if command.command not in COMMANDS:
            raise CommandRejected("MALFORMED", f"unknown command {command.command!r}")
        if command.alg != ALG:
            raise CommandRejected("MALFORMED", f"unsupported algorithm {command.alg!r}")
        try:
            parse_time(command.issued_at)
            parse_time(command.expires_at)
        except ValueError as exc:
            raise CommandRejected("MALFORMED", f"bad timestamp: {exc}") from exc
        return command

    def to_json(self) -> dict[str, Any]:
        """Every field, as sent on the stream."""
        # Not dataclasses.asdict: its deep copy costs ~50 µs a command, and every field here is a scalar.
        return {name: getattr(self, name) for name in _FIELDS}

    def signing_payload(self) -> dict[str, Any]:
        """What the signature covers: every field except ``signature``."""
        return {name: getattr(self, name) for name in _FIELDS if name != "signature"}


_FIELDS = tuple(item.name for item in fields(SignedCommand))


def sign_command(
    signer: Signer,
    *,
    command_id: str,
    tenant_id: str,
    agent_id: str,
    command: str,
    reason: str,
    issued_at: datetime | str,
    expires_at: datetime | str,
    nonce: str,
    sequence: int,
) -> SignedCommand:
    """The command signed by ``signer`` (datetimes are rendered with ``format_time``)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    unsigned = SignedCommand(
        command_id=command_id,
        tenant_id=tenant_id,
        agent_id=agent_id,
        command=command,
        reason=reason,
        issued_at=_as_text(issued_at),
        expires_at=_as_text(expires_at),
        nonce=nonce,
        sequence=sequence,
        key_id=signer.key_id,
        alg=ALG,
        signature="",
    )
    payload = unsigned.signing_payload()
    return SignedCommand(**payload, signature=signer.sign(payload))


def verify_command(
    public_keys: Mapping[str, bytes],
    command: SignedCommand,
    *,
    now: datetime | None = None,
    agent_id: str | None = None,
) -> None:
    """Return if ``command`` may be obeyed by ``agent_id`` at ``now``; raise ``CommandRejected`` if not.

    The signature is checked first: nothing else in an unsigned message can be trusted.
    """
    if command.alg != ALG or command.command not in COMMANDS:
        raise CommandRejected("MALFORMED", "unsupported algorithm or command")
    public_key = public_keys.get(command.key_id)
    if public_key is None:
        raise CommandRejected("UNKNOWN_KEY", f"no published key {command.key_id!r}")
    if not verify(public_key, command.signing_payload(), command.signature):
        raise CommandRejected("BAD_SIGNATURE", "the signature does not match the command")
    if agent_id is not None and command.agent_id.lower() != agent_id.lower():
        raise CommandRejected("WRONG_AGENT", f"the command is for agent {command.agent_id}")
    try:
        expires = parse_time(command.expires_at)
    except ValueError as exc:
        raise CommandRejected("MALFORMED", f"bad expires_at: {exc}") from exc
    if expires <= (now or datetime.now(UTC)):
        raise CommandRejected("EXPIRED", f"the command expired at {command.expires_at}")


@dataclass(frozen=True, slots=True)
class StreamAnchor:
    """The highest sequence an agent has acknowledged, signed by the server when a stream opens.

    Every command at or below it was obeyed and reported already, so a receiver raises its replay floor to
    it (``ReplayGuard.anchor``). It only ever raises the floor: a replayed older anchor changes nothing.
    """

    tenant_id: str
    agent_id: str
    acknowledged: int
    issued_at: str
    key_id: str
    alg: str
    signature: str
    #: The agent's ancestors, parent first: how it recognises a lineage fleet command as its own. Signed
    #: with the rest, and left out of the JSON (so out of what is signed) when the agent has none.
    ancestors: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> StreamAnchor:
        """The anchor in ``data``; ``CommandRejected("MALFORMED")`` if not one."""
        if not isinstance(data, Mapping):
            raise CommandRejected("MALFORMED", "an anchor is a JSON object")
        values: dict[str, Any] = {}
        for item in fields(cls):
            value = data.get(item.name)
            if item.name == "acknowledged":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise CommandRejected("MALFORMED", "acknowledged must be a non-negative integer")
            elif item.name == "ancestors":
                if value is None:
                    value = ()
                elif not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                    raise CommandRejected("MALFORMED", "ancestors must be a list of agent ids")
                value = tuple(value)
            elif not isinstance(value, str):
                raise CommandRejected("MALFORMED", f"{item.name} must be a string")
            values[item.name] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """Every field, as sent on the stream (``ancestors`` only when there are any)."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "ancestors":
                if value:
                    data[item.name] = list(value)
                continue
            data[item.name] = value
        return data

    def signing_payload(self) -> dict[str, Any]:
        """What the signature covers: every field except ``signature``."""
        return {key: value for key, value in self.to_json().items() if key != "signature"}


def sign_anchor(
    signer: Signer,
    *,
    tenant_id: str,
    agent_id: str,
    acknowledged: int,
    issued_at: datetime,
    ancestors: tuple[str, ...] = (),
) -> StreamAnchor:
    """The anchor for ``agent_id`` (with its ``ancestors``, parent first), signed by ``signer``."""
    unsigned = StreamAnchor(
        tenant_id=tenant_id,
        agent_id=agent_id,
        acknowledged=acknowledged,
        issued_at=format_time(issued_at),
        key_id=signer.key_id,
        alg=ALG,
        signature="",
        ancestors=ancestors,
    )
    payload = unsigned.signing_payload()
    return StreamAnchor(**{**payload, "ancestors": ancestors}, signature=signer.sign(payload))


def verify_anchor(public_keys: Mapping[str, bytes], anchor: StreamAnchor, *, agent_id: str) -> None:
    """Return if ``anchor`` is signed by a published key and names ``agent_id``; else ``CommandRejected``."""
    if anchor.alg != ALG:
        raise CommandRejected("MALFORMED", f"unsupported algorithm {anchor.alg!r}")
    public_key = public_keys.get(anchor.key_id)
    if public_key is None:
        raise CommandRejected("UNKNOWN_KEY", f"no published key {anchor.key_id!r}")
    if not verify(public_key, anchor.signing_payload(), anchor.signature):
        raise CommandRejected("BAD_SIGNATURE", "the signature does not match the anchor")
    if anchor.agent_id.lower() != agent_id.lower():
        raise CommandRejected("WRONG_AGENT", f"the anchor is for agent {anchor.agent_id}")


TENANT_SCOPE = "tenant"
LINEAGE_SCOPE = "lineage"


def tenant_scope() -> dict[str, str]:
    """The scope of a tenant-wide fleet command."""
    return {"kind": TENANT_SCOPE}


def lineage_scope(root_agent_id: str) -> dict[str, str]:
    """The scope of a fleet command for ``root_agent_id`` and its descendants."""
    return {"kind": LINEAGE_SCOPE, "root_agent_id": root_agent_id}


def _scope_of(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise CommandRejected("MALFORMED", "scope must be an object")
    kind = value.get("kind")
    if kind == TENANT_SCOPE and set(value) == {"kind"}:
        return tenant_scope()
    root = value.get("root_agent_id")
    if kind == LINEAGE_SCOPE and isinstance(root, str) and root and set(value) == {"kind", "root_agent_id"}:
        return lineage_scope(root)
    raise CommandRejected("MALFORMED", "scope must be {kind: tenant} or {kind: lineage, root_agent_id}")


def covers(scope: Mapping[str, str], agent_id: str, ancestors: tuple[str, ...] | list[str]) -> bool:
    """Whether ``scope`` includes the agent ``agent_id`` whose ancestors are ``ancestors``."""
    if scope.get("kind") == TENANT_SCOPE:
        return True
    root = str(scope.get("root_agent_id", "")).lower()
    return root == agent_id.lower() or any(root == ancestor.lower() for ancestor in ancestors)


@dataclass(frozen=True, slots=True)
class FleetCommand:
    """One TERMINATE, PAUSE or RESUME for every agent of a scope (a tenant, or a root and its descendants).

    ``sequence`` grows by one per tenant across its fleet commands.
    """

    command_id: str
    tenant_id: str
    scope: dict[str, str]
    command: str
    reason: str
    issued_at: str
    expires_at: str
    nonce: str
    sequence: int
    key_id: str
    alg: str
    signature: str

    @classmethod
    def from_json(cls, data: Any) -> FleetCommand:
        """The fleet command in ``data``; ``CommandRejected("MALFORMED")`` if not one."""
        if not isinstance(data, Mapping):
            raise CommandRejected("MALFORMED", "a command is a JSON object")
        values: dict[str, Any] = {}
        for item in fields(cls):
            value = data.get(item.name)
            if item.name == "sequence":
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise CommandRejected("MALFORMED", "sequence must be a positive integer")
            elif item.name == "scope":
                value = _scope_of(value)
            elif not isinstance(value, str):
                raise CommandRejected("MALFORMED", f"{item.name} must be a string")
            values[item.name] = value
        command = cls(**values)
        if command.command not in COMMANDS:
            raise CommandRejected("MALFORMED", f"unknown command {command.command!r}")
        if command.alg != ALG:
            raise CommandRejected("MALFORMED", f"unsupported algorithm {command.alg!r}")
        try:
            parse_time(command.issued_at)
            parse_time(command.expires_at)
        except ValueError as exc:
            raise CommandRejected("MALFORMED", f"bad timestamp: {exc}") from exc
        return command

    def to_json(self) -> dict[str, Any]:
        """Every field, as sent on the stream."""
        data = {name: getattr(self, name) for name in _FLEET_FIELDS}
        data["scope"] = dict(self.scope)
        return data

    def signing_payload(self) -> dict[str, Any]:
        """What the signature covers: every field except ``signature`` (scope and tenant included)."""
        data = self.to_json()
        del data["signature"]
        return data


_FLEET_FIELDS = tuple(item.name for item in fields(FleetCommand))


def sign_fleet_command(
    signer: Signer,
    *,
    command_id: str,
    tenant_id: str,
    scope: Mapping[str, str],
    command: str,
    reason: str,
    issued_at: datetime | str,
    expires_at: datetime | str,
    nonce: str,
    sequence: int,
) -> FleetCommand:
    """The fleet command signed by ``signer``."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    unsigned = FleetCommand(
        command_id=command_id,
        tenant_id=tenant_id,
        scope=_scope_of(scope),
        command=command,
        reason=reason,
        issued_at=_as_text(issued_at),
        expires_at=_as_text(expires_at),
        nonce=nonce,
        sequence=sequence,
        key_id=signer.key_id,
        alg=ALG,
        signature="",
    )
    payload = unsigned.signing_payload()
    return FleetCommand(**payload, signature=signer.sign(payload))


def verify_fleet_command(
    public_keys: Mapping[str, bytes],
    command: FleetCommand,
    *,
    tenant_id: str,
    agent_id: str,
    ancestors: tuple[str, ...] | list[str] = (),
    now: datetime | None = None,
) -> None:
    """Return if ``command`` may be obeyed by ``agent_id`` of ``tenant_id`` (whose ancestors are
    ``ancestors``) at ``now``; raise ``CommandRejected`` if not (``WRONG_TENANT``, ``NOT_IN_SCOPE``, ...).

    The signature is checked first: nothing else in an unsigned message can be trusted.
    """
    if command.alg != ALG or command.command not in COMMANDS:
        raise CommandRejected("MALFORMED", "unsupported algorithm or command")
    public_key = public_keys.get(command.key_id)
    if public_key is None:
        raise CommandRejected("UNKNOWN_KEY", f"no published key {command.key_id!r}")
    if not verify(public_key, command.signing_payload(), command.signature):
        raise CommandRejected("BAD_SIGNATURE", "the signature does not match the command")
    if command.tenant_id.lower() != tenant_id.lower():
        raise CommandRejected("WRONG_TENANT", f"the command is for tenant {command.tenant_id}")
    if not covers(command.scope, agent_id, ancestors):
        raise CommandRejected("NOT_IN_SCOPE", f"the command's scope {command.scope} does not include us")
    try:
        expires = parse_time(command.expires_at)
    except ValueError as exc:
        raise CommandRejected("MALFORMED", f"bad expires_at: {exc}") from exc
    if expires <= (now or datetime.now(UTC)):
        raise CommandRejected("EXPIRED", f"the command expired at {command.expires_at}")


class ReplayGuard:
    """Remembers what was obeyed: the highest sequence per agent (and per tenant for fleet commands) and
    the recent command ids."""

    def __init__(self, max_ids: int = MAX_REMEMBERED_IDS) -> None:
        self.max_ids = max_ids
        self._highest: dict[str, int] = {}
        self._fleet_highest: dict[str, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    def check_fleet(self, command: FleetCommand) -> None:
        """Raise ``CommandRejected`` (``REPLAYED`` / ``OUT_OF_ORDER``) unless the fleet command is new and
        after every fleet command of the tenant obeyed so far."""
        if command.command_id in self._seen:
            raise CommandRejected("REPLAYED", f"command {command.command_id} was already accepted")
        highest = self._fleet_highest.get(command.tenant_id.lower(), 0)
        if command.sequence <= highest:
            raise CommandRejected("OUT_OF_ORDER", f"fleet sequence {command.sequence} is not after {highest}")

    def accept_fleet(self, command: FleetCommand) -> None:
        """Record the fleet command as obeyed (call after ``check_fleet``)."""
        tenant = command.tenant_id.lower()
        self._fleet_highest[tenant] = max(self._fleet_highest.get(tenant, 0), command.sequence)
        self._remember(command.command_id)

    def _remember(self, command_id: str) -> None:
        self._seen[command_id] = None
        while len(self._seen) > self.max_ids:
            self._seen.popitem(last=False)

    def highest(self, agent_id: str) -> int:
        """The highest sequence accepted for ``agent_id`` (0 if none): a stream resumes after it."""
        return self._highest.get(agent_id.lower(), 0)

    def check(self, command: SignedCommand) -> None:
        """Raise ``CommandRejected`` (``REPLAYED`` / ``OUT_OF_ORDER``) unless the command is new and next."""
        if command.command_id in self._seen:
            raise CommandRejected("REPLAYED", f"command {command.command_id} was already accepted")
        if command.sequence <= self.highest(command.agent_id):
            raise CommandRejected(
                "OUT_OF_ORDER",
                f"sequence {command.sequence} is not after {self.highest(command.agent_id)}",
            )

    def anchor(self, anchor: StreamAnchor) -> None:
        """Refuse from now on every sequence at or below the server's acknowledged one (call after
        ``verify_anchor``)."""
        agent = anchor.agent_id.lower()
        self._highest[agent] = max(self._highest.get(agent, 0), anchor.acknowledged)

    def accept(self, command: SignedCommand) -> None:
        """Record ``command`` as obeyed (call after ``check``)."""
        agent = command.agent_id.lower()
        self._highest[agent] = max(self._highest.get(agent, 0), command.sequence)
        self._remember(command.command_id)
