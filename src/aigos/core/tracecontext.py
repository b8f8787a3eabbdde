"""W3C Trace Context (https://www.w3.org/TR/trace-context/), the ``traceparent`` header, as a receiver
reads it: section 3.2 (its fields), 3.2.2.3 (an all-zero trace-id or parent-id is invalid), 3.2.2.1
(version ``ff`` is invalid; a higher version is parsed as version ``00``, its extra fields ignored)
and 3.3 (a header that does not parse is ignored, as if absent).
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """``(trace_id, parent_id)`` of a ``traceparent`` value, or None if it is not one."""
    found = _HEADER.match(value.strip())
    if found is None:
        return None
    version, trace_id, parent_id, _flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        # ff is forbidden; version 00 has exactly four fields.
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return trace_id, parent_id
