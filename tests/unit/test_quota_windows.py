"""The counting primitives: sliding windows, UTC calendar keys, budget windows, day counters."""

from __future__ import annotations

import math

import pytest

from cache_service.quota.windows import (
    HELD_RETRY_S,
    BudgetWindow,
    DayCounter,
    SlidingWindow,
    window_key,
    window_reset_at,
)
from tests.unit.quota_support import ts

# -- SlidingWindow -----------------------------------------------------------------------------


def test_window_admits_up_to_capacity_and_frees_exactly_after_window() -> None:
    w = SlidingWindow(3)
    for t in (0.0, 10.0, 20.0):
        assert w.try_take(1, t) is not None
    assert w.try_take(1, 30.0) is None
    assert w.time_until(1, 30.0) == pytest.approx(30.0)
    assert w.try_take(1, 59.999) is None
    assert w.try_take(1, 60.0) is not None  # the t=0 take stops counting at exactly t+60
    assert w.used(60.0) == 3


def test_window_time_until_walks_oldest_first() -> None:
    w = SlidingWindow(100)
    w.take(30, 0.0)
    w.take(30, 10.0)
    w.take(40, 20.0)
    assert w.time_until(0, 25.0) == 0.0
    assert w.time_until(50, 25.0) == pytest.approx(45.0)  # needs the first two gone
    assert w.time_until(30, 25.0) == pytest.approx(35.0)
    assert w.time_until(101, 25.0) == math.inf
    assert w.reset_in(25.0) == pytest.approx(55.0)


def test_window_adjust_in_place_and_after_ageing_out() -> None:
    w = SlidingWindow(100)
    c = w.take(50, 0.0)
    w.adjust(c, 20, 10.0)  # under-run frees room immediately
    assert w.used(10.0) == 20
    w.adjust(c, 90, 10.0)  # over-run charged at the original time
    assert w.used(10.0) == 90
    assert w.used(60.0) == 0
    assert not c.live
    w.adjust(c, 10, 61.0)  # shrinking an aged-out charge changes nothing
    assert w.used(61.0) == 0
    w.adjust(c, 40, 70.0)  # growing it books the overrun now, as debt
    assert w.used(70.0) == 30
    assert w.used(129.999) == 30
    assert w.used(130.0) == 0


def test_window_release_and_reset_in_skip_zero_entries() -> None:
    w = SlidingWindow(2)
    w.take(1, 0.0)
    c = w.take(1, 30.0)
    w.adjust(c, 0, 31.0)
    assert w.used(31.0) == 1
    assert w.reset_in(31.0) == pytest.approx(29.0)


def test_window_unlimited_still_tracks() -> None:
    w = SlidingWindow(None)
    for _ in range(1000):
        w.take(5, 0.0)
    assert w.admits(10**9, 0.0)
    assert w.time_until(10**9, 0.0) == 0.0
    assert w.remaining(0.0) is None
    assert w.used(0.0) == 5000
    w.capacity = 4000
    assert not w.admits(1, 1.0)


def test_window_clock_stepping_back_is_no_time_passing() -> None:
    w = SlidingWindow(1)
    w.take(1, 100.0)
    assert not w.admits(1, 50.0)
    assert not w.admits(1, 159.0)
    assert w.admits(1, 160.0)


def test_window_validation() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(-1)
    with pytest.raises(ValueError):
        SlidingWindow(1, window_s=0)
    w = SlidingWindow(1)
    with pytest.raises(ValueError):
        w.take(-1, 0.0)
    c = w.take(1, 0.0)
    with pytest.raises(ValueError):
        w.adjust(c, -1, 0.0)


# -- calendar windows --------------------------------------------------------------------------


def test_window_keys_and_resets() -> None:
    t = ts("2026-11-22T13:45:00")
    assert window_key("day", t) == "2026-11-22"
    assert window_key("month", t) == "2026-11"
    assert window_reset_at("day", t) == ts("2026-11-23T00:00:00")
    assert window_reset_at("month", t) == ts("2026-12-01T00:00:00")


def test_rollover_at_end_of_november_and_of_year() -> None:
    t = ts("2026-11-30T23:59:59")
    assert window_key("day", t) == "2026-11-30"
    assert window_key("day", t + 1) == "2026-12-01"
    assert window_key("month", t + 1) == "2026-12"
    assert window_reset_at("day", t) == t + 1
    assert window_reset_at("month", t) == t + 1
    new_year = ts("2026-12-31T23:00:00")
    assert window_reset_at("month", new_year) == ts("2027-01-01T00:00:00")
    assert window_key("month", ts("2027-01-01T00:00:00")) == "2027-01"


def test_budget_window_admits_exactly_up_to_limit() -> None:
    now = ts("2026-11-22T12:00:00")
    b = BudgetWindow("day", 1.0, now)
    for _ in range(10):
        assert b.admits(0.1, now)
        b.hold(0.1, now)
        b.settle(0.1, 0.1, now)
    assert b.spent_usd(now) == pytest.approx(1.0)
    assert not b.admits(0.0, now)  # exhausted: an unpriced request must not slip through
    assert b.remaining_usd(now) == 0.0


def test_budget_window_holds_count_and_carry_over_midnight() -> None:
    now = ts("2026-11-22T23:59:00")
    b = BudgetWindow("day", 1.0, now)
    b.hold(0.6, now)
    assert not b.admits(0.5, now)
    assert b.retry_after(0.5, now) == HELD_RETRY_S  # only the hold is in the way
    assert b.used_usd(now) == pytest.approx(0.6)
    later = ts("2026-11-23T00:01:00")
    assert b.key(later) == "2026-11-23"
    assert b.used_usd(later) == pytest.approx(0.6)  # still in flight
    b.settle(0.6, 0.7, later)  # lands in the window it settles in
    assert b.spent_usd(later) == pytest.approx(0.7)
    assert b.held_usd == 0.0


def test_budget_window_retry_after() -> None:
    now = ts("2026-11-22T23:00:00")
    b = BudgetWindow("day", 1.0, now)
    assert b.retry_after(0.5, now) == 0.0
    assert b.retry_after(1.5, now) == math.inf
    assert b.never_admits(1.5)
    b.hold(0.8, now)
    b.settle(0.8, 0.8, now)
    assert b.retry_after(0.5, now) == pytest.approx(3600.0)
    assert BudgetWindow("day", 0.0, now).retry_after(0.0, now) == math.inf


def test_budget_window_does_not_reset_when_wall_clock_steps_back() -> None:
    now = ts("2026-11-23T00:00:05")
    b = BudgetWindow("day", 1.0, now)
    b.hold(0.5, now)
    b.settle(0.5, 0.5, now)
    assert b.key(now - 10) == "2026-11-23"
    assert b.spent_usd(now - 10) == pytest.approx(0.5)


def test_budget_window_release_mismatch_never_goes_negative() -> None:
    now = 0.0
    b = BudgetWindow("month", None, now)
    b.release(1.0)
    assert b.held_usd == 0.0
    assert b.remaining_usd(now) is None
    with pytest.raises(ValueError):
        b.limit_usd = -1


def test_day_counter_admits_up_to_the_limit_and_resets_at_utc_midnight() -> None:
    now = ts("2026-11-30T23:00:00")
    c = DayCounter(3, now)
    for _ in range(3):
        assert c.admits(1, now)
        c.hold(1, now)
        c.settle(1, 1, now)
    assert not c.admits(1, now)
    assert c.remaining(now) == 0
    assert c.retry_after(1, now) == pytest.approx(3600.0)
    midnight = ts("2026-12-01T00:00:00")
    assert not c.admits(1, midnight - 1e-3)
    assert c.admits(1, midnight)
    assert c.key(midnight) == "2026-12-01"
    assert (c.settled(midnight), c.remaining(midnight)) == (0, 3)


def test_day_counter_retry_while_only_holds_are_in_the_way() -> None:
    now = ts("2026-11-22T12:00:00")
    tokens = DayCounter(1000, now)
    tokens.hold(700, now)
    assert (tokens.used(now), tokens.held, tokens.settled(now)) == (700, 700, 0)
    assert tokens.retry_after(400, now) == HELD_RETRY_S  # may settle lower any moment
    requests = DayCounter(1, now, holds_shrink=False)
    requests.hold(1, now)
    # a held request settles as one request: only midnight surely frees room
    assert requests.retry_after(1, now) == pytest.approx(12 * 3600)
    requests.release(1)
    assert requests.admits(1, now)


def test_day_counter_overrun_is_charged_and_never_admits_past_the_limit() -> None:
    now = ts("2026-11-22T12:00:00")
    c = DayCounter(1000, now)
    c.hold(500, now)
    c.settle(500, 1300, now)  # more than estimated: charged in full, as debt
    assert c.used(now) == 1300
    assert c.remaining(now) == 0
    assert not c.admits(0, now)  # exhausted: nothing slips through, not even 0 tokens
    assert c.retry_after(1001, now) == math.inf
    assert DayCounter(0, now).retry_after(1, now) == math.inf
    assert DayCounter(None, now).retry_after(10**12, now) == 0.0


def test_day_counter_hold_across_midnight_lands_in_the_new_day() -> None:
    now = ts("2026-11-22T23:59:59")
    c = DayCounter(10, now)
    c.hold(4, now)
    later = ts("2026-11-23T00:00:01")
    assert c.used(later) == 4  # still in flight, so it holds against the new day
    c.settle(4, 3, later)
    assert c.settled(later) == 3
    assert c.export(later) == {"window": "2026-11-23", "settled": 3, "held": 0}


def test_day_counter_import_and_add_only_into_today() -> None:
    now = ts("2026-11-22T12:00:00")
    c = DayCounter(None, now)
    assert c.import_settled("2026-11-22", 5, now)
    assert c.import_settled("2026-11-22", 3, now)  # the larger wins: idempotent
    assert not c.import_settled("2026-11-21", 50, now)
    assert c.add_settled("2026-11-22", 2, now)
    assert not c.add_settled("2026-11-23", 2, now)
    assert c.settled(now) == 7
    assert c.remaining(now) is None
    with pytest.raises(ValueError):
        c.limit = -1
