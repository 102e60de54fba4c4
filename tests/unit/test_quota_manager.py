"""QuotaManager: admission across scopes, settlement, budgets, reconfiguration, reporting."""

from __future__ import annotations

import math

import pytest

from cache_service.protocols import Clock
from cache_service.quota.estimate import estimate_request_tokens
from cache_service.quota.limits import Denial, Limits
from cache_service.quota.manager import QuotaManager, Reservation
from cache_service.quota.scopes import format_duration
from cache_service.quota.windows import HELD_RETRY_S
from tests.fakes import FakeClock
from tests.unit.quota_support import G, P, U, admitted, denied, ts


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
    before = qm.snapshot().as_json()
    d = denied(qm.reserve([P, G], 100, 0.01))
    assert d.scope == G
    assert d.limit == "rpm"
    assert qm.snapshot().as_json() == before  # the project admitted it but took nothing
    p = qm.scope_snapshot(P).as_json()
    assert p["requests"]["used"] == 2
    assert p["tokens"]["used"] == 200
    assert p["daily_budget"]["held"] == pytest.approx(0.02)
    # the project alone still admits
    admitted(qm.reserve([P], 100, 0.0))


def test_duplicate_scopes_count_once(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpm=1))
    r = admitted(qm.reserve([P, P], 5, 0.0))
    assert r.scopes == (P,)
    assert qm.scope_snapshot(P).as_json()["tokens"]["used"] == 5


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
    snap = qm.scope_snapshot(("project", "other")).as_json()
    assert snap["requests"] == {
        "used": 50,
        "limit": None,
        "remaining": None,
        "reset_at": pytest.approx(qm.snapshot().as_json()["now"] + 60),
        "reset_in_s": pytest.approx(60),
        "window_s": 60.0,
    }
    assert snap["daily_budget"]["used"] == pytest.approx(50.0)
    assert qm.limits("project", "other") == Limits()
    assert qm.ratelimit_headers(("project", "other")) == {}


def test_reads_do_not_create_scopes(qm: QuotaManager) -> None:
    qm.scope_snapshot(("project", "ghost")).as_json()
    qm.ratelimit_headers(("project", "ghost"))
    assert qm.scopes() == []


# -- settle / release --------------------------------------------------------------------------


def test_settle_more_than_reserved_creates_debt(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(tpm=1000))
    r = admitted(qm.reserve([P], 500, 0.0))
    clock.advance(5)
    qm.settle(r, 1300, 0.0)
    assert qm.scope_snapshot(P).as_json()["tokens"]["used"] == 1300
    assert qm.scope_snapshot(P).as_json()["tokens"]["remaining"] == 0
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
    snap = qm.scope_snapshot(P).as_json()["daily_budget"]
    assert snap["spent"] == pytest.approx(0.3)
    assert snap["held"] == pytest.approx(0.7)
    assert snap["used"] == pytest.approx(1.0)


def test_release_returns_everything(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpm=1, tpm=100, daily_budget_usd=1.0))
    r = admitted(qm.reserve([P], 100, 1.0))
    assert qm.in_flight == 1
    qm.release(r)
    assert qm.in_flight == 0
    snap = qm.scope_snapshot(P).as_json()
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
    assert qm.scope_snapshot(P).as_json()["daily_budget"]["spent"] == pytest.approx(2.0)


def test_settle_across_midnight_charges_the_new_day(qm: QuotaManager, clock: FakeClock) -> None:
    clock.wall = ts("2026-11-30T23:59:59")
    qm.configure(*P, Limits(daily_budget_usd=1.0, monthly_budget_usd=10.0))
    r = admitted(qm.reserve([P], 10, 0.5))
    clock.advance(1)  # 2026-12-01T00:00:00
    snap = qm.scope_snapshot(P).as_json()
    assert snap["daily_budget"]["window"] == "2026-12-01"
    assert snap["monthly_budget"]["window"] == "2026-12"
    assert snap["daily_budget"]["held"] == pytest.approx(0.5)
    qm.settle(r, 10, 0.4)
    snap = qm.scope_snapshot(P).as_json()
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
    assert qm.scope_snapshot(P).as_json()["requests"]["used"] == 7
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
    snap = qm.snapshot().as_json()
    assert snap["now"] == clock.wall
    assert snap["in_flight"] == 0
    assert [(s["kind"], s["name"]) for s in snap["scopes"]] == [G, P]
    p = snap["scopes"][1]
    assert p["limits"] == {
        "rpm": 10,
        "tpm": 1000,
        "daily_budget_usd": 2.0,
        "monthly_budget_usd": 20.0,
        "rpd": None,
        "tpd": None,
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


# -- per-day limits (rpd, tpd) -----------------------------------------------------------------


def test_rpd_admits_exactly_the_limit_until_utc_midnight(
    qm: QuotaManager, clock: FakeClock
) -> None:
    qm.configure(*P, Limits(rpd=3))
    for _ in range(3):
        qm.settle(admitted(qm.reserve([P], 10, 0.0)), 10, 0.0)
    d = denied(qm.reserve([P], 10, 0.0))
    assert (d.scope, d.limit, d.retryable) == (P, "rpd", True)
    assert d.retry_after_s == pytest.approx(12 * 3600)  # to 00:00 UTC, not 60 s
    assert d.retry_after_header() == str(12 * 3600)
    assert d.message == (
        "project 'default' is over its requests-per-day limit (rpd=3; 3 used or in flight "
        "this UTC day)"
    )
    clock.advance(60)  # a new minute does not help
    assert denied(qm.reserve([P], 10, 0.0)).limit == "rpd"
    clock.wall = ts("2026-11-22T23:59:59.999")
    wait = denied(qm.reserve([P], 10, 0.0)).retry_after_s
    assert wait == pytest.approx(0.001, abs=1e-6)
    assert clock.wall + wait >= ts("2026-11-23T00:00:00")  # waiting exactly that long suffices
    clock.wall = ts("2026-11-23T00:00:00")
    for _ in range(3):
        admitted(qm.reserve([P], 10, 0.0))
    assert denied(qm.reserve([P], 10, 0.0)).limit == "rpd"


def test_rpd_counts_requests_in_flight_and_a_release_frees_one(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpd=2))
    first = admitted(qm.reserve([P], 10, 0.0))
    admitted(qm.reserve([P], 10, 0.0))
    d = denied(qm.reserve([P], 10, 0.0))
    # held requests settle as requests: waiting a second would not help, midnight would
    assert d.retry_after_s == pytest.approx(12 * 3600)
    qm.release(first)  # never sent: it does not count
    admitted(qm.reserve([P], 10, 0.0))


def test_rpd_zero_blocks_everything(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpd=0))
    d = denied(qm.reserve([P], 1, 0.0))
    assert (d.limit, d.retryable, d.retry_after_s) == ("rpd", False, math.inf)
    assert d.message == "project 'default' allows no requests (rpd=0)"


def test_tpd_holds_the_estimate_and_settles_to_the_actual(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(tpd=1000))
    r = admitted(qm.reserve([P], 700, 0.0))
    d = denied(qm.reserve([P], 400, 0.0))
    assert d.limit == "tpd"
    assert d.retry_after_s == HELD_RETRY_S  # only the hold is in the way, and it may shrink
    assert d.message == (
        "project 'default' is over its tokens-per-day limit (tpd=1000; 700 used or in flight "
        "this UTC day)"
    )
    qm.settle(r, 300, 0.0)
    admitted(qm.reserve([P], 400, 0.0))
    day = qm.scope_snapshot(P).as_json()["daily_tokens"]
    assert (day["settled"], day["held"], day["used"], day["remaining"]) == (300, 400, 700, 300)


def test_tpd_overrun_is_debt_until_midnight(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(tpd=1000))
    qm.settle(admitted(qm.reserve([P], 500, 0.0)), 1300, 0.0)
    assert qm.scope_snapshot(P).as_json()["daily_tokens"]["used"] == 1300
    d = denied(qm.reserve([P], 1, 0.0))
    assert d.limit == "tpd"
    assert d.retry_after_s == pytest.approx(12 * 3600)
    clock.advance(12 * 3600)
    admitted(qm.reserve([P], 1000, 0.0))


def test_request_larger_than_tpd_is_not_retryable(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(tpd=1000))
    d = denied(qm.reserve([P], 1001, 0.0))
    assert (d.limit, d.retryable, d.retry_after_header()) == ("tpd", False, None)
    assert d.message == (
        "the request's estimated 1001 tokens exceed project 'default''s tokens-per-day limit "
        "(tpd=1000), so it can never be admitted; lower max_tokens or raise tpd"
    )


def test_day_limits_are_all_or_nothing_with_the_other_limits(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpm=10, tpm=10_000, rpd=100, tpd=10_000))
    qm.configure(*U, Limits(rpd=1))
    admitted(qm.reserve([P, U], 100, 0.0))
    before = qm.snapshot().as_json()
    d = denied(qm.reserve([P, U], 100, 0.0))
    assert (d.scope, d.limit) == (U, "rpd")
    assert qm.snapshot().as_json() == before  # the project admitted it but took nothing
    assert qm.scope_snapshot(P).as_json()["daily_requests"]["used"] == 1
    assert qm.scope_snapshot(P).as_json()["daily_tokens"]["used"] == 100
    # the longest wait is reported: midnight (rpd) beats a minute (rpm)
    qm.configure(*U, Limits(rpm=1, rpd=1))
    assert denied(qm.reserve([U], 1, 0.0)).limit == "rpd"


def test_settle_across_midnight_charges_the_new_day_counts(
    qm: QuotaManager, clock: FakeClock
) -> None:
    clock.wall = ts("2026-11-22T23:59:59")
    qm.configure(*P, Limits(rpd=1, tpd=100))
    r = admitted(qm.reserve([P], 80, 0.0))
    clock.advance(2)
    day = qm.scope_snapshot(P).as_json()
    assert day["daily_requests"]["window"] == "2026-11-23"
    assert (day["daily_requests"]["used"], day["daily_tokens"]["used"]) == (1, 80)  # held
    qm.settle(r, 50, 0.0)
    day = qm.scope_snapshot(P).as_json()
    assert (day["daily_requests"]["settled"], day["daily_tokens"]["settled"]) == (1, 50)
    assert denied(qm.reserve([P], 10, 0.0)).limit == "rpd"


def test_reconfigure_keeps_day_counts(qm: QuotaManager) -> None:
    for _ in range(5):
        qm.settle(admitted(qm.reserve([P], 100, 0.0)), 100, 0.0)
    qm.configure(*P, Limits(rpd=5))
    assert denied(qm.reserve([P], 1, 0.0)).limit == "rpd"
    qm.configure(*P, Limits(rpd=6, tpd=550))
    assert denied(qm.reserve([P], 100, 0.0)).limit == "tpd"
    admitted(qm.reserve([P], 50, 0.0))


def test_day_limit_validation() -> None:
    with pytest.raises(ValueError, match="rpd"):
        Limits(rpd=-1)
    with pytest.raises(ValueError, match="tpd"):
        Limits(tpd=math.inf)  # type: ignore[arg-type]


def test_snapshot_shape_of_day_counts(qm: QuotaManager, clock: FakeClock) -> None:
    qm.configure(*P, Limits(rpd=100, tpd=5000))
    qm.settle(admitted(qm.reserve([P], 300, 0.0)), 120, 0.0)
    admitted(qm.reserve([P], 200, 0.0))
    p = qm.scope_snapshot(P).as_json()
    assert p["limits"]["rpd"] == 100
    assert p["limits"]["tpd"] == 5000
    assert p["daily_requests"] == {
        "window": "2026-11-22",
        "used": 2,
        "settled": 1,
        "held": 1,
        "limit": 100,
        "remaining": 98,
        "reset_at": ts("2026-11-23T00:00:00"),
    }
    assert p["daily_tokens"] == {
        "window": "2026-11-22",
        "used": 320,
        "settled": 120,
        "held": 200,
        "limit": 5000,
        "remaining": 4680,
        "reset_at": ts("2026-11-23T00:00:00"),
    }
    unlimited = qm.scope_snapshot(G).as_json()["daily_requests"]
    assert (unlimited["limit"], unlimited["remaining"]) == (None, None)
    # per-day limits have no OpenAI header of their own
    assert qm.ratelimit_headers(P) == {}
