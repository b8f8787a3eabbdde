"""When to send a request again, and how long to wait first: one policy for every loop in the SDK.

The sync and async transports retry requests; the kill-switch listeners reconnect their stream. Each loop
waits in its own way (``time.sleep``, ``Event.wait``, ``asyncio.sleep``) but asks ``RetryPolicy.after``
whether to go on and for how long to wait: exponential backoff with jitter, or the server's ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aigos.sdk.transport import HttpResponse

RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: A 503 that says the change may have been made: sent again, a write could be made twice.
OUTCOME_UNKNOWN = b'"OUTCOME_UNKNOWN"'
#: Past this many doublings every wait is the cap anyway; bounding the exponent keeps ``2.0**n`` finite
#: for a loop that never gives up.
_MAX_DOUBLINGS = 64


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often to try again (``max_retries``; ``None`` for ever) and how long to wait between attempts.

    The wait before the attempt after attempt ``n`` (counted from 0) is ``min(cap, base * 2**n)`` scaled by a
    random factor in [0.5, 1], so that clients that failed together do not come back together.
    """

    max_retries: int | None = 3
    base: float = 0.1
    cap: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt ``attempt + 1``: ``Retry-After`` if given (at most ``cap``), else jittered
        exponential."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        backoff = min(self.cap, self.base * (2.0 ** min(attempt, _MAX_DOUBLINGS)))
        return backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    def after(self, attempt: int, response: HttpResponse | None = None) -> float | None:
        """Seconds to wait before sending again after attempt ``attempt`` (from 0) ended with ``response``
        (``None``: no response at all, the connection failed), or ``None`` if it must not be sent again."""
        if self.max_retries is not None and attempt >= self.max_retries:
            return None
        if response is None:
            return self.delay(attempt)
        if not worth_retrying(response):
            return None
        return self.delay(attempt, retry_after(response.headers))


def worth_retrying(response: HttpResponse) -> bool:
    """Whether sending the same request again is safe and may succeed: a refusal that changed nothing."""
    return response.status in RETRY_STATUSES and OUTCOME_UNKNOWN not in response.body


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or ``None``."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "nan" parses as a float but is no duration (and would make the sleep raise).
        return seconds if not math.isnan(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
