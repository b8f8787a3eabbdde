"""The one retry decision every SDK loop asks: whether to send again, and how long to wait first."""

from __future__ import annotations

import email.utils
import time

import pytest

from aigos.sdk.killswitch import RECONNECT
from aigos.sdk.retry import RetryPolicy, retry_after, worth_retrying
from aigos.sdk.transport import HttpResponse

POLICY = RetryPolicy(max_retries=3, base=0.1, cap=10.0)


def answer(status: int, body: bytes = b"{}", **headers: str) -> HttpResponse:
    return HttpResponse(status, {k.replace("_", "-").lower(): v for k, v in headers.items()}, body)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_refusal_that_changed_nothing_is_sent_again(status: int) -> None:
    assert worth_retrying(answer(status))
    assert POLICY.after(0, answer(status)) is not None


@pytest.mark.parametrize("status", [200, 201, 204, 400, 401, 404, 409, 500])
def test_other_answers_are_final(status: int) -> None:
    assert POLICY.after(0, answer(status)) is None


def test_an_unknown_outcome_is_never_sent_again() -> None:
    unknown = answer(503, b'{"status":503,"code":"OUTCOME_UNKNOWN"}', retry_after="0")
    assert not worth_retrying(unknown)
    assert POLICY.after(0, unknown) is None


def test_the_limit_counts_attempts_after_the_first() -> None:
    assert [POLICY.after(attempt) is not None for attempt in range(5)] == [True, True, True, False, False]
    assert [RetryPolicy(max_retries=0).after(0), RetryPolicy(max_retries=0).after(0, answer(503))] == [
        None,
        None,
    ]


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_is_exponential_with_jitter_under_the_cap(attempt: int) -> None:
    ceiling = min(POLICY.cap, POLICY.base * 2**attempt)
    waits = [RetryPolicy(max_retries=None, base=0.1, cap=10.0).after(attempt) for _ in range(50)]
    assert all(wait is not None and ceiling / 2 <= wait <= ceiling for wait in waits)


def test_retry_after_is_obeyed_up_to_the_cap() -> None:
    assert POLICY.after(0, answer(503, retry_after="2")) == 2.0
    assert POLICY.after(2, answer(429, retry_after="0")) == 0.0
    assert POLICY.after(0, answer(503, retry_after="3600")) == POLICY.cap
    assert POLICY.after(0, answer(503, retry_after="-5")) == 0.0


def test_retry_after_forms() -> None:
    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert retry_after({}) is None
    assert retry_after({"retry-after": ""}) is None
    assert retry_after({"retry-after": "soon"}) is None
    # "nan" is a float to Python but no duration: the policy falls back to its own backoff.
    assert retry_after({"retry-after": "nan"}) is None
    wait = POLICY.after(0, answer(503, retry_after="nan"))
    assert wait is not None
    assert 0.05 <= wait <= 0.1
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    seconds = retry_after({"retry-after": later})
    assert seconds is not None
    assert 100 < seconds <= 120
    assert retry_after({"retry-after": "Mon, 01 Jan 2001 00:00:00 GMT"}) == 0.0


def test_a_policy_without_limit_never_gives_up_nor_overflows() -> None:
    forever = RetryPolicy(max_retries=None, base=0.25, cap=30.0)
    assert all(forever.after(attempt) is not None for attempt in (0, 10, 1_100, 10**6))
    wait = forever.after(10**6)
    assert wait is not None
    assert 15.0 <= wait <= 30.0


def test_the_kill_switch_stream_reconnects_for_ever_from_a_quarter_second_to_thirty() -> None:
    assert RECONNECT.max_retries is None
    ceilings = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    for attempt, ceiling in enumerate(ceilings):
        wait = RECONNECT.after(attempt)
        assert wait is not None
        assert ceiling / 2 <= wait <= ceiling
