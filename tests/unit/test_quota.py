from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from cache_service.protocols import Clock
from cache_service.quota import (
    HELD_RETRY_S,
    AlertTracker,
    BudgetWindow,
    Denial,
    Limits,
    QuotaManager,
    Reservation,
    SlidingWindow,
    SpendEvent,
    estimate_request_tokens,
    format_duration,
    window_key,
    window_reset_at,
)
from tests.fakes import FakeClock


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


P: tuple[str, str] = ("project", "default")
G: tuple[str, str] = ("global", "total")
U: tuple[str, str] = ("upstream", "openai")


def admitted(result: Reservation | Denial) -> Reservation:
    assert isinstance(result, Reservation), result
    return result


def denied(result: Reservation | Denial) -> Denial:
    assert isinstance(result, Denial), result
    return result


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ts("2026-11-22T12:00:00"))


@pytest.fixture
def qm(clock: FakeClock) -> QuotaManager:
    return QuotaManager(clock)


def test_fake_clock_satisfies_protocol(clock: FakeClock) -> None:
    assert isinstance(clock, Clock)


# -- helpers -----------------------------------------------------------------------------------


def test_estimate_request_tokens() -> None:
    assert estimate_request_tokens(100, 50) == 150
    assert estimate_request_tokens(100, None) == 356
    assert estimate_request_tokens(100, None, default_completion=10) == 110
    assert estimate_request_tokens(100, 0) == 100
    assert estimate_request_tokens(-5, -5) == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.02, "20ms"),
        (0.0201, "21ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (6, "6s"),
        (6.0000000001, "6s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (90.5, "1m30.5s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_duration_rejects_infinity() -> None:
    with pytest.raises(ValueError, match="infinite"):
        format_duration(math.inf)


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


# -- QuotaManager: admission -------------------------------------------------------------------


def test_limits_validation() -> None:
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=-1)
    with pytest.raises(ValueError, match="daily_budget_usd"):
        Limits(daily_budget_usd=-0.01)
    with pytest.raises(ValueError, match="monthly_budget_usd"):
        Limits(monthly_budget_usd=math.inf)
    with pytest.raises(ValueError, match="tpm"):
        Limits(tpm=math.nan)  # type: ignore[arg-type]


def test_reserve_rejects_bad_estimates(qm: QuotaManager) -> None:
    for tokens, cost in [(-1, 0.0), (1, -0.5), (1, math.nan), (1, math.inf)]:
        with pytest.raises(ValueError):
            qm.reserve([P], tokens, cost)
    assert qm.in_flight == 0


def test_burst_of_100_against_rpm_10_admits_exactly_10_in_the_minute(
    qm: QuotaManager, clock: FakeClock
) -> None:
    qm.configure(*P, Limits(rpm=10))
    results = [qm.reserve([P], 10, 0.0) for _ in range(100)]
    assert sum(isinstance(r, Reservation) for r in results) == 10
    assert all(isinstance(r, Reservation) for r in results[:10])
    first_denial = denied(results[10])
    assert first_denial.limit == "rpm"
    assert first_denial.scope == P
    assert first_denial.retryable
    assert first_denial.retry_after_s == pytest.approx(60.0)
    assert first_denial.retry_after_header() == "60"
    assert (
        first_denial.message == "project 'default' is over its requests-per-minute limit (rpm=10)"
    )
    for r in results[:10]:
        qm.settle(admitted(r), 10, 0.0)
    # The rest of that minute admits nothing, however often the waiters retry.
    for _ in range(59):
        clock.advance(1.0)
        assert isinstance(qm.reserve([P], 10, 0.0), Denial)
    clock.advance(0.999)
    assert isinstance(qm.reserve([P], 10, 0.0), Denial)
    clock.advance(0.001)
    assert sum(isinstance(qm.reserve([P], 10, 0.0), Reservation) for _ in range(100)) == 10


def test_tpm_denial_message_and_retry(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(tpm=80000))
    admitted(qm.reserve([P], 60000, 0.0))
    clock.advance(15)
    d = denied(qm.reserve([P], 30000, 0.0))
    assert d.limit == "tpm"
    assert d.message == "project 'default' is over its tokens-per-minute limit (tpm=80000)"
    assert d.retry_after_s == pytest.approx(45.0)
    admitted(qm.reserve([P], 20000, 0.0))


def test_request_larger_than_tpm_is_not_retryable(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(tpm=1000))
    d = denied(qm.reserve([P], 1001, 0.0))
    assert d.limit == "tpm"
    assert not d.retryable
    assert d.retry_after_s == math.inf
    assert d.retry_after_header() is None
    assert "can never be admitted" in d.message
    assert "tpm=1000" in d.message


def test_rpm_zero_blocks_everything(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpm=0))
    d = denied(qm.reserve([P], 1, 0.0))
    assert not d.retryable
    assert d.message == "project 'default' allows no requests (rpm=0)"


def test_all_or_nothing_across_scopes(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(rpm=100, tpm=10_000))
    qm.configure(*G, Limits(rpm=2))
    admitted(qm.reserve([P, G], 100, 0.01))
    admitted(qm.reserve([P, G], 100, 0.01))
    before = qm.snapshot()
    d = denied(qm.reserve([P, G], 100, 0.01))
    assert d.scope == G
    assert d.limit == "rpm"
    assert qm.snapshot() == before  # the project admitted it but took nothing
    p = qm.scope_snapshot(P)
    assert p["requests"]["used"] == 2
    assert p["tokens"]["used"] == 200
    assert p["daily_budget"]["held"] == pytest.approx(0.02)
    # the project alone still admits
    admitted(qm.reserve([P], 100, 0.0))


def test_duplicate_scopes_count_once(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpm=1))
    r = admitted(qm.reserve([P, P], 5, 0.0))
    assert r.scopes == (P,)
    assert qm.scope_snapshot(P)["tokens"]["used"] == 5


def test_worst_denial_is_reported(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(rpm=1, daily_budget_usd=1.0))
    qm.configure(*U, Limits(tpm=100))
    r = admitted(qm.reserve([P, U], 100, 1.0))
    qm.settle(r, 100, 1.0)
    d = denied(qm.reserve([P, U], 10, 0.5))
    # rpm and tpm wait 60 s; the daily budget waits for midnight (12 h): that one is reported
    assert d.limit == "daily_budget"
    assert d.retry_after_s == pytest.approx(12 * 3600)
    # a never-admissible one beats any wait
    d = denied(qm.reserve([P, U], 1000, 0.5))
    assert (d.limit, d.retryable) == ("tpm", False)


def test_check_is_a_dry_run(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpm=1))
    assert qm.check([P], 1, 0.0) is None
    assert qm.check([P], 1, 0.0) is None
    admitted(qm.reserve([P], 1, 0.0))
    d = qm.check([P], 1, 0.0)
    assert d is not None
    assert d.limit == "rpm"
    with pytest.raises(ValueError):
        qm.check([P], -1, 0.0)


def test_unconfigured_scope_is_unlimited_but_tracked(qm: QuotaManager) -> None:
    for _ in range(50):
        admitted(qm.reserve([("project", "other")], 1000, 1.0))
    snap = qm.scope_snapshot(("project", "other"))
    assert snap["requests"] == {
        "used": 50,
        "limit": None,
        "remaining": None,
        "reset_at": pytest.approx(qm.snapshot()["now"] + 60),
        "reset_in_s": pytest.approx(60),
        "window_s": 60.0,
    }
    assert snap["daily_budget"]["used"] == pytest.approx(50.0)
    assert qm.limits("project", "other") == Limits()
    assert qm.ratelimit_headers(("project", "other")) == {}


def test_reads_do_not_create_scopes(qm: QuotaManager) -> None:
    qm.scope_snapshot(("project", "ghost"))
    qm.ratelimit_headers(("project", "ghost"))
    assert qm.scopes() == []


# -- settle / release --------------------------------------------------------------------------


def test_settle_more_than_reserved_creates_debt(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(tpm=1000))
    r = admitted(qm.reserve([P], 500, 0.0))
    clock.advance(5)
    qm.settle(r, 1300, 0.0)
    assert qm.scope_snapshot(P)["tokens"]["used"] == 1300
    assert qm.scope_snapshot(P)["tokens"]["remaining"] == 0
    d = denied(qm.reserve([P], 1, 0.0))
    assert d.retry_after_s == pytest.approx(55.0)  # until the overrun request ages out
    clock.advance(55)
    admitted(qm.reserve([P], 1000, 0.0))


def test_settle_less_than_reserved_frees_room(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(tpm=1000, daily_budget_usd=1.0))
    r = admitted(qm.reserve([P], 900, 0.9))
    assert isinstance(qm.reserve([P], 500, 0.0), Denial)
    qm.settle(r, 400, 0.3)
    admitted(qm.reserve([P], 600, 0.7))
    assert isinstance(qm.reserve([P], 0, 0.01), Denial)
    snap = qm.scope_snapshot(P)["daily_budget"]
    assert snap["spent"] == pytest.approx(0.3)
    assert snap["held"] == pytest.approx(0.7)
    assert snap["used"] == pytest.approx(1.0)


def test_release_returns_everything(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpm=1, tpm=100, daily_budget_usd=1.0))
    r = admitted(qm.reserve([P], 100, 1.0))
    assert qm.in_flight == 1
    qm.release(r)
    assert qm.in_flight == 0
    snap = qm.scope_snapshot(P)
    assert snap["requests"]["used"] == 0
    assert snap["tokens"]["used"] == 0
    assert snap["daily_budget"]["used"] == 0.0
    admitted(qm.reserve([P], 100, 1.0))


def test_second_settle_or_release_is_a_noop(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(daily_budget_usd=10.0))
    r = admitted(qm.reserve([P], 10, 1.0))
    qm.settle(r, 10, 2.0)
    qm.settle(r, 10, 2.0)
    qm.release(r)
    assert r.closed
    assert qm.in_flight == 0
    assert qm.scope_snapshot(P)["daily_budget"]["spent"] == pytest.approx(2.0)


def test_settle_across_midnight_charges_the_new_day(qm: QuotaManager, clock: FakeClock) -> None:
    clock.wall = ts("2026-11-30T23:59:59")
    qm.configure(*P, Limits(daily_budget_usd=1.0, monthly_budget_usd=10.0))
    r = admitted(qm.reserve([P], 10, 0.5))
    clock.advance(1)  # 2026-12-01T00:00:00
    snap = qm.scope_snapshot(P)
    assert snap["daily_budget"]["window"] == "2026-12-01"
    assert snap["monthly_budget"]["window"] == "2026-12"
    assert snap["daily_budget"]["held"] == pytest.approx(0.5)
    qm.settle(r, 10, 0.4)
    snap = qm.scope_snapshot(P)
    assert snap["daily_budget"]["spent"] == pytest.approx(0.4)
    assert snap["monthly_budget"]["spent"] == pytest.approx(0.4)


# -- budgets -----------------------------------------------------------------------------------


def test_daily_budget_denies_until_midnight_then_resets(qm: QuotaManager, clock: FakeClock) -> None:
    clock.wall = ts("2026-11-30T23:00:00")
    qm.configure(*P, Limits(daily_budget_usd=1.0))
    qm.settle(admitted(qm.reserve([P], 10, 0.9)), 10, 0.9)
    d = denied(qm.reserve([P], 10, 0.2))
    assert d.limit == "daily_budget"
    assert d.retry_after_s == pytest.approx(3600.0)
    assert d.retryable
    assert "project 'default' is over its daily budget ($1.00 per UTC day" in d.message
    clock.wall = ts("2026-11-30T23:59:59")
    assert isinstance(qm.reserve([P], 10, 0.2), Denial)
    clock.advance(1)
    admitted(qm.reserve([P], 10, 0.2))


def test_monthly_budget_resets_on_the_first(qm: QuotaManager, clock: FakeClock) -> None:
    clock.wall = ts("2026-11-30T23:59:59")
    qm.configure(*P, Limits(monthly_budget_usd=5.0))
    qm.settle(admitted(qm.reserve([P], 10, 5.0)), 10, 5.0)
    d = denied(qm.reserve([P], 10, 0.01))
    assert d.limit == "monthly_budget"
    assert d.retry_after_s == pytest.approx(1.0)
    assert "UTC month" in d.message
    clock.advance(1)
    admitted(qm.reserve([P], 10, 0.01))


def test_budget_denied_only_by_holds_suggests_short_retry(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(daily_budget_usd=1.0))
    admitted(qm.reserve([P], 10, 0.8))
    d = denied(qm.reserve([P], 10, 0.5))
    assert d.retry_after_s == HELD_RETRY_S
    assert "$0.80 used or in flight" in d.message


def test_cost_over_whole_budget_is_not_retryable(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(daily_budget_usd=1.0))
    d = denied(qm.reserve([P], 10, 1.5))
    assert not d.retryable
    assert d.retry_after_s == math.inf
    assert "can never be admitted" in d.message


def test_zero_cost_request_blocked_once_budget_exhausted(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(daily_budget_usd=1.0))
    admitted(qm.reserve([P], 10, 0.0))
    qm.settle(admitted(qm.reserve([P], 10, 1.0)), 10, 1.0)
    assert denied(qm.reserve([P], 10, 0.0)).limit == "daily_budget"


# -- runtime reconfiguration -------------------------------------------------------------------


def test_reconfigure_keeps_usage(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(rpm=10, daily_budget_usd=10.0))
    for _ in range(5):
        qm.settle(admitted(qm.reserve([P], 10, 1.0)), 10, 1.0)
    qm.configure(*P, Limits(rpm=3, daily_budget_usd=4.0))
    assert qm.limits(*P) == Limits(rpm=3, daily_budget_usd=4.0)
    d = denied(qm.reserve([P], 10, 0.0))
    assert d.limit == "daily_budget"  # 12 h to midnight beats 60 s
    qm.configure(*P, Limits(rpm=3))
    assert denied(qm.reserve([P], 10, 0.0)).limit == "rpm"
    qm.configure(*P, Limits(rpm=6))
    admitted(qm.reserve([P], 10, 0.0))
    qm.configure(*P, Limits())
    admitted(qm.reserve([P], 10, 0.0))
    qm.configure(*P, Limits(rpm=7))
    assert qm.scope_snapshot(P)["requests"]["used"] == 7
    assert isinstance(qm.reserve([P], 10, 0.0), Denial)


def test_limit_added_later_starts_from_real_usage(qm: QuotaManager) -> None:
    for _ in range(5):
        admitted(qm.reserve([P], 100, 0.0))
    qm.configure(*P, Limits(tpm=550))
    assert denied(qm.reserve([P], 100, 0.0)).limit == "tpm"
    admitted(qm.reserve([P], 50, 0.0))


# -- reporting ---------------------------------------------------------------------------------


def test_snapshot_shape(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(rpm=10, tpm=1000, daily_budget_usd=2.0, monthly_budget_usd=20.0))
    qm.settle(admitted(qm.reserve([P, G], 100, 0.5)), 120, 0.25)
    clock.advance(6)
    snap = qm.snapshot()
    assert snap["now"] == clock.wall
    assert snap["in_flight"] == 0
    assert [(s["kind"], s["name"]) for s in snap["scopes"]] == [G, P]
    p = snap["scopes"][1]
    assert p["limits"] == {
        "rpm": 10,
        "tpm": 1000,
        "daily_budget_usd": 2.0,
        "monthly_budget_usd": 20.0,
    }
    assert p["requests"]["used"] == 1
    assert p["requests"]["remaining"] == 9
    assert p["requests"]["reset_in_s"] == pytest.approx(54.0)
    assert p["requests"]["reset_at"] == pytest.approx(clock.wall + 54.0)
    assert p["tokens"]["used"] == 120
    assert p["tokens"]["remaining"] == 880
    day = p["daily_budget"]
    assert day["window"] == "2026-11-22"
    assert day["limit"] == 2.0
    assert day["remaining"] == pytest.approx(1.75)
    assert day["reset_at"] == ts("2026-11-23T00:00:00")
    month = p["monthly_budget"]
    assert month["window"] == "2026-11"
    assert month["remaining"] == pytest.approx(19.75)
    assert month["reset_at"] == ts("2026-12-01T00:00:00")


def test_ratelimit_headers(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(rpm=10, tpm=1000))
    admitted(qm.reserve([P], 100, 0.0))
    clock.advance(54)
    admitted(qm.reserve([P], 300, 0.0))
    clock.advance(0.5)
    assert qm.ratelimit_headers(P) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "8",
        "x-ratelimit-reset-requests": "59.5s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "59.5s",
    }
    clock.advance(60)
    headers = qm.ratelimit_headers(P)
    assert headers["x-ratelimit-remaining-requests"] == "10"
    assert headers["x-ratelimit-reset-requests"] == "0s"
    qm.configure(*P, Limits(rpm=10))
    assert set(qm.ratelimit_headers(P)) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }


# -- persistence -------------------------------------------------------------------------------


def spend_some(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(daily_budget_usd=1.0, monthly_budget_usd=3.0))
    qm.settle(admitted(qm.reserve([P, G], 10, 0.6)), 10, 0.6)


def test_export_import_across_restart_same_day(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    spend_some(old)
    data = old.export_spend()
    assert data["version"] == 1
    clock.advance(3600)
    new = QuotaManager(clock)
    new.configure(*P, Limits(daily_budget_usd=1.0, monthly_budget_usd=3.0))
    new.import_spend(data)
    new.import_spend(data)  # idempotent
    assert new.scope_snapshot(P)["daily_budget"]["spent"] == pytest.approx(0.6)
    assert new.scope_snapshot(G)["monthly_budget"]["spent"] == pytest.approx(0.6)
    assert denied(new.reserve([P], 10, 0.5)).limit == "daily_budget"
    admitted(new.reserve([P], 10, 0.4))


def test_import_across_day_change_keeps_only_the_month(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    spend_some(old)
    data = old.export_spend()
    clock.advance(86_400)
    new = QuotaManager(clock)
    new.import_spend(data)
    snap = new.scope_snapshot(P)
    assert snap["daily_budget"]["spent"] == 0.0
    assert snap["monthly_budget"]["spent"] == pytest.approx(0.6)


def test_import_across_month_change_keeps_nothing(clock: FakeClock) -> None:
    clock.wall = ts("2026-11-30T23:00:00")
    old = QuotaManager(clock)
    spend_some(old)
    data = old.export_spend()
    clock.advance(3600)
    new = QuotaManager(clock)
    new.import_spend(data)
    snap = new.scope_snapshot(P)
    assert snap["daily_budget"]["spent"] == 0.0
    assert snap["monthly_budget"]["spent"] == 0.0


def test_in_flight_holds_are_restored_as_spent(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    old.configure(*P, Limits(daily_budget_usd=1.0))
    r = admitted(old.reserve([P], 10, 0.3))
    data = old.export_spend()
    record = next(r for r in data["scopes"] if (r["kind"], r["name"]) == P)
    assert record["daily"] == {"window": "2026-11-22", "spent_usd": 0.0, "held_usd": 0.3}
    assert data["open"] == [{"id": r.id, "scopes": [list(P)], "usd": 0.3}]
    new = QuotaManager(clock)
    new.restore_spend(data)
    assert new.scope_snapshot(P)["daily_budget"]["spent"] == pytest.approx(0.3)


def test_older_snapshots_without_open_holds_count_held_as_spent(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    admitted(old.reserve([P], 10, 0.3))
    data = old.export_spend()
    del data["open"]
    new = QuotaManager(clock)
    new.import_spend(data)
    assert new.scope_snapshot(P)["daily_budget"]["spent"] == pytest.approx(0.3)


def test_journal_after_snapshot_settles_what_the_snapshot_held(clock: FakeClock) -> None:
    events: list[SpendEvent] = []
    old = QuotaManager(clock)
    old.on_spend = events.append
    held = admitted(old.reserve([P, G], 10, 0.3))
    data = old.export_spend()
    covered = len(events)
    old.settle(held, 10, 0.1)  # cheaper than estimated, after the snapshot
    late = admitted(old.reserve([P], 10, 0.2))
    old.release(late)
    admitted(old.reserve([P], 10, 0.05))  # in flight at the crash
    assert [e.op for e in events[covered:]] == ["settle", "hold", "release", "hold"]
    new = QuotaManager(clock)
    new.restore_spend(data, events[covered:])
    assert new.scope_snapshot(P)["daily_budget"]["spent"] == pytest.approx(0.15)
    assert new.scope_snapshot(G)["monthly_budget"]["spent"] == pytest.approx(0.1)


def test_journal_charges_settlements_in_their_own_day(clock: FakeClock) -> None:
    events: list[SpendEvent] = []
    old = QuotaManager(clock)
    old.on_spend = events.append
    old.settle(admitted(old.reserve([P], 10, 0.4)), 10, 0.4)
    clock.advance(86_400)
    old.settle(admitted(old.reserve([P], 10, 0.1)), 10, 0.1)
    new = QuotaManager(clock)
    new.restore_spend(None, events)
    snap = new.scope_snapshot(P)
    assert snap["daily_budget"]["spent"] == pytest.approx(0.1)
    assert snap["monthly_budget"]["spent"] == pytest.approx(0.5)


def test_import_keeps_larger_existing_spend(qm: QuotaManager, clock: FakeClock) -> None:
    spend_some(qm)
    qm.import_spend(
        {
            "version": 1,
            "scopes": [
                {
                    "kind": "project",
                    "name": "default",
                    "daily": {"window": "2026-11-22", "spent_usd": 0.1},
                }
            ],
        }
    )
    assert qm.scope_snapshot(P)["daily_budget"]["spent"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 2, "scopes": []},
        {"version": 1, "scopes": {}},
        {"version": 1, "scopes": [{"name": "x"}]},
        {"version": 1, "scopes": [{"kind": "p", "name": "x", "daily": {"window": "d"}}]},
        {"version": 1, "scopes": [{"kind": "p", "name": "x", "daily": None}]},
        {
            "version": 1,
            "scopes": [
                {"kind": "p", "name": "x", "daily": {"window": "2026-11-22", "spent_usd": 1.0}},
                {"kind": "p", "name": "y", "daily": {"window": "2026-11-22", "spent_usd": "nan"}},
            ],
        },
        {
            "version": 1,
            "scopes": [
                {"kind": "p", "name": "y", "monthly": {"window": "2026-11", "spent_usd": -1}}
            ],
        },
    ],
)
def test_import_rejects_malformed_and_applies_nothing(
    qm: QuotaManager, data: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        qm.import_spend(data)
    assert qm.scopes() == []


def test_import_of_another_window_creates_no_scope(qm: QuotaManager) -> None:
    qm.import_spend(
        {
            "version": 1,
            "scopes": [
                {"kind": "p", "name": "x", "daily": {"window": "2026-11-21", "spent_usd": 1}}
            ],
        }
    )
    assert qm.scopes() == []


# -- alerts ------------------------------------------------------------------------------------


def test_alerts_fire_once_per_threshold_and_window() -> None:
    t = AlertTracker()
    assert t.check(P, "daily_budget", "2026-11-22", 0.5, 1.0) == []
    alerts = t.check(P, "daily_budget", "2026-11-22", 0.85, 1.0)
    assert [a.threshold for a in alerts] == [0.8]
    assert alerts[0].message == (
        "project 'default' has used 85% of its daily budget for 2026-11-22 (0.85 of 1)"
    )
    assert t.check(P, "daily_budget", "2026-11-22", 0.86, 1.0) == []
    assert t.check(P, "daily_budget", "2026-11-22", 0.5, 1.0) == []
    assert t.check(P, "daily_budget", "2026-11-22", 0.85, 1.0) == []  # no re-fire after a dip
    assert [a.threshold for a in t.check(P, "daily_budget", "2026-11-22", 2.0, 1.0)] == [0.95]
    # a jump past both at once reports both, once
    assert [a.threshold for a in t.check(P, "monthly_budget", "2026-11", 1.0, 1.0)] == [0.8, 0.95]
    # a new window re-arms
    assert [a.threshold for a in t.check(P, "daily_budget", "2026-11-23", 0.9, 1.0)] == [0.8]
    # other scopes are independent
    assert len(t.check(G, "daily_budget", "2026-11-23", 0.9, 1.0)) == 1


def test_alerts_ignore_unlimited_or_zero_limits() -> None:
    t = AlertTracker([0.5])
    assert t.check(P, "daily_budget", "k", 100.0, None) == []
    assert t.check(P, "daily_budget", "k", 100.0, 0.0) == []
    with pytest.raises(ValueError):
        AlertTracker([0.0])


def test_alert_fired_set_survives_restart() -> None:
    t = AlertTracker()
    t.check(P, "daily_budget", "2026-11-22", 0.9, 1.0)
    t.check(G, "monthly_budget", "2026-11", 0.81, 1.0)
    saved = t.export_fired()
    restarted = AlertTracker()
    restarted.import_fired(saved)
    assert restarted.check(P, "daily_budget", "2026-11-22", 0.9, 1.0) == []
    assert [a.threshold for a in restarted.check(P, "daily_budget", "2026-11-22", 0.96, 1.0)] == [
        0.95
    ]
    assert restarted.check(P, "daily_budget", "2026-11-23", 0.9, 1.0) != []
    # a stale record for an older window does not clobber the newer one
    restarted.import_fired(saved)
    assert restarted.check(P, "daily_budget", "2026-11-23", 0.9, 1.0) == []
    restarted.import_fired(saved)
    assert [a.threshold for a in restarted.check(G, "monthly_budget", "2026-11", 1, 1.0)] == [0.95]


def test_manager_check_alerts_uses_actual_spend(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(daily_budget_usd=1.0, monthly_budget_usd=100.0))
    tracker = AlertTracker()
    r = admitted(qm.reserve([P], 10, 0.9))
    assert qm.check_alerts(tracker) == []  # held, not spent
    qm.settle(r, 10, 0.85)
    alerts = qm.check_alerts(tracker)
    assert [(a.scope_kind, a.limit, a.threshold) for a in alerts] == [
        ("project", "daily_budget", 0.8)
    ]
    assert qm.check_alerts(tracker) == []
    clock.advance(86_400)
    assert qm.check_alerts(tracker) == []
