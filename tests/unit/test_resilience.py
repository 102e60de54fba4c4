from __future__ import annotations

import pytest

from cache_service.resilience import CircuitBreaker, backoff_delay, parse_retry_after
from tests.fakes import FakeClock


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after": "-3"}, 0.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # RFC 9110's IMF-fixdate
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # obsolete RFC 850 form
        ("Wed Oct 21 07:28:05 2015", 5.0),  # obsolete asctime form, no zone: GMT
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # now
        ("Tue, 20 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("Wed, 21 Oct 2015 09:28:10 +0200", 10.0),  # a zone other than GMT still places it
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_as_an_http_date_is_read_against_the_clock(
    value: str, expected: float | None
) -> None:
    clock = FakeClock(wall=NOW)
    assert parse_retry_after({"retry-after": value}, clock.now()) == expected


def test_seconds_and_ms_win_over_the_clock() -> None:
    assert parse_retry_after({"retry-after": "3"}, NOW) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}, NOW) == 0.25
    # A broken ms header falls back to the date.
    headers = {"retry-after-ms": "x", "retry-after": "Wed, 21 Oct 2015 07:28:02 GMT"}
    assert parse_retry_after(headers, NOW) == 2.0


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    top = [backoff_delay(a, base_s=0.5, max_s=8, rand=lambda: 1.0) for a in range(7)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delay(3, base_s=0.5, max_s=8, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, base_s=0.5, max_s=8, rand=lambda: 0.25) == 1.0


def test_backoff_waits_at_least_retry_after_but_capped() -> None:
    assert backoff_delay(0, base_s=0.5, max_s=8, retry_after_s=2, rand=lambda: 0.1) == 2
    assert backoff_delay(4, base_s=0.5, max_s=8, retry_after_s=2, rand=lambda: 1.0) == 8
    capped = backoff_delay(
        0, base_s=0.5, max_s=8, retry_after_s=3600, retry_after_cap_s=30, rand=lambda: 0.0
    )
    assert capped == 30


def test_breaker_opens_cools_down_and_tries_once() -> None:
    clock = FakeClock()
    b = CircuitBreaker(clock, failure_threshold=3, cooldown_s=30)
    for _ in range(2):
        b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    clock.advance(29)
    assert not b.allow()
    clock.advance(1)
    assert b.state == "half_open"
    assert b.allow()  # the one trial call
    assert not b.allow()  # nobody else until it is judged
    b.failure()  # the trial failed: open again, for another cooldown
    assert b.state == "open"
    clock.advance(30)
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_abandoned_trial_frees_the_half_open_slot() -> None:
    clock = FakeClock()
    b = CircuitBreaker(clock, failure_threshold=1, cooldown_s=10)
    b.failure()
    clock.advance(10)
    assert b.allow()
    b.abandon()  # e.g. refused by quota before reaching the upstream
    assert b.allow()
