"""Threshold alerts: once per threshold and window, across restarts, on actual spend."""

from __future__ import annotations

import pytest

from cache_service.quota.alerts import AlertTracker
from cache_service.quota.limits import Limits
from cache_service.quota.manager import QuotaManager
from tests.fakes import FakeClock
from tests.unit.quota_support import G, P, admitted, ts


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ts("2026-11-22T12:00:00"))


@pytest.fixture
def qm(clock: FakeClock) -> QuotaManager:
    return QuotaManager(clock)


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


def test_day_limits_alert_on_settled_counts(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpd=10, tpd=1000))
    tracker = AlertTracker()
    r = admitted(qm.reserve([P], 900, 0.0))
    assert qm.check_alerts(tracker) == []  # held, not settled
    qm.settle(r, 850, 0.0)
    alerts = qm.check_alerts(tracker)
    assert [(a.limit, a.threshold, a.used, a.limit_value) for a in alerts] == [
        ("tpd", 0.8, 850, 1000)
    ]
    assert alerts[0].message == (
        "project 'default' has used 85% of its tokens-per-day limit for 2026-11-22 (850 of 1000)"
    )
    for _ in range(7):
        qm.settle(admitted(qm.reserve([P], 0, 0.0)), 0, 0.0)
    alerts = qm.check_alerts(tracker)
    assert [(a.limit, a.threshold, a.window) for a in alerts] == [("rpd", 0.8, "2026-11-22")]
    assert "requests-per-day limit" in alerts[0].message
    assert qm.check_alerts(tracker) == []
