"""What an agent may report as telemetry: the event type's form, and the types only the server records."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aigos.core.storable import find_unstorable, text_problem

#: Dotted, context first (``tool.completed``, ``llm.call``); no wildcards.
EVENT_TYPE = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$"
_EVENT_TYPE = re.compile(EVENT_TYPE)

#: Event types the server's own contexts record: an agent reporting one could forge the audit trail.
RESERVED_PREFIXES = (
    "policy.",
    "kill_switch.",
    # The kill switch's events were named so before they took the seed's name; still its own.
    "killswitch.",
    "agent.",
    "tenant.",
    "api_key.",
    "credential.",
    "audit.",
    "budget.",
    "member.",
    "user.",
    "platform.",
    "telemetry.",
    "asset_card.",
    "aigrc.",
)


def reserved(event_type: str) -> bool:
    """Whether only the server may record events of this type."""
    return event_type.lower().startswith(RESERVED_PREFIXES)


def reportable(event_type: str) -> bool:
    """Whether an agent may report an event of this type (well formed, 3..100 characters, not reserved)."""
    return 3 <= len(event_type) <= 100 and bool(_EVENT_TYPE.match(event_type)) and not reserved(event_type)


def unreportable(data: Mapping[str, Any] | None, **texts: str | None) -> str | None:
    """Why the server would refuse an event with this ``data`` and these ids (``trace_id=...``), or ``None``.

    The same check as the server's edge: no NUL or lone surrogate, finite numbers, 64-bit integers,
    bounded depth; the answer names the field by JSON pointer.
    """
    for name, text in texts.items():
        if text is not None and (problem := text_problem(text)) is not None:
            return f"{name} {problem}"
    found = find_unstorable(data) if data else None
    return None if found is None else f"data{found.pointer} {found.reason}"
