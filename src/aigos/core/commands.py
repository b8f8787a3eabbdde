"""Kill-switch commands: the signed form an agent receives, how to verify it, and how to spot a replay.

Pure code shared by the server (which signs) and the SDK (which verifies before it obeys). A command is
signed with Ed25519 over the canonical JSON of every field except ``signature``: tenant, agent, command,
reason, issue time, expiry, a random nonce, the per-agent ``sequence`` and the key that signed it. The
sequence grows by one per agent and command, so a receiver that remembers the highest one it obeyed
detects both a replayed command and one delivered out of order. When a stream opens, the server sends a
signed ``StreamAnchor``: the highest sequence the agent has acknowledged, so a receiver that lost its memory
(a restart) still refuses an old, unexpired command that a newer one superseded.
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

    Codes: ``BAD_SIGNATURE``, ``UNKNOWN_KEY``, ``EXPIRED``, ``WRONG_AGENT``, ``MALFORMED``, ``REPLAYED``,
    ``OUT_OF_ORDER``.
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
        issued_at=issued_at if isinstance(issued_at, str) else format_time(issued_at),
        expires_at=expires_at if isinstance(expires_at, str) else format_time(expires_at),
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
            elif not isinstance(value, str):
                raise CommandRejected("MALFORMED", f"{item.name} must be a string")
            values[item.name] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """Every field, as sent on the stream."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def signing_payload(self) -> dict[str, Any]:
        """What the signature covers: every field except ``signature``."""
        return {key: value for key, value in self.to_json().items() if key != "signature"}


def sign_anchor(
    signer: Signer, *, tenant_id: str, agent_id: str, acknowledged: int, issued_at: datetime
) -> StreamAnchor:
    """The anchor for ``agent_id``, signed by ``signer``."""
    unsigned = StreamAnchor(
        tenant_id=tenant_id,
        agent_id=agent_id,
        acknowledged=acknowledged,
        issued_at=format_time(issued_at),
        key_id=signer.key_id,
        alg=ALG,
        signature="",
    )
    payload = unsigned.signing_payload()
    return StreamAnchor(**payload, signature=signer.sign(payload))


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


class ReplayGuard:
    """Remembers what was obeyed: the highest sequence per agent and the recent command ids."""

    def __init__(self, max_ids: int = MAX_REMEMBERED_IDS) -> None:
        self.max_ids = max_ids
        self._highest: dict[str, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

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
        self._seen[command.command_id] = None
        while len(self._seen) > self.max_ids:
            self._seen.popitem(last=False)
