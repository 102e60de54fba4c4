"""Spend persistence: export/import across a restart, open holds, journal recovery."""

from __future__ import annotations

import pytest

from cache_service.quota.limits import Limits
from cache_service.quota.manager import QuotaManager, SpendEvent
from tests.fakes import FakeClock
from tests.unit.quota_support import G, P, admitted, denied, ts


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(ts("2026-11-22T12:00:00"))


@pytest.fixture
def qm(clock: FakeClock) -> QuotaManager:
    return QuotaManager(clock)


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
    assert new.scope_snapshot(P).as_json()["daily_budget"]["spent"] == pytest.approx(0.6)
    assert new.scope_snapshot(G).as_json()["monthly_budget"]["spent"] == pytest.approx(0.6)
    assert denied(new.reserve([P], 10, 0.5)).limit == "daily_budget"
    admitted(new.reserve([P], 10, 0.4))


def test_import_across_day_change_keeps_only_the_month(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    spend_some(old)
    data = old.export_spend()
    clock.advance(86_400)
    new = QuotaManager(clock)
    new.import_spend(data)
    snap = new.scope_snapshot(P).as_json()
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
    snap = new.scope_snapshot(P).as_json()
    assert snap["daily_budget"]["spent"] == 0.0
    assert snap["monthly_budget"]["spent"] == 0.0


def test_in_flight_holds_are_restored_as_spent(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    old.configure(*P, Limits(daily_budget_usd=1.0))
    r = admitted(old.reserve([P], 10, 0.3))
    data = old.export_spend()
    record = next(r for r in data["scopes"] if (r["kind"], r["name"]) == P)
    assert record["daily"] == {"window": "2026-11-22", "spent_usd": 0.0, "held_usd": 0.3}
    assert data["open"] == [{"id": r.id, "scopes": [list(P)], "usd": 0.3, "tokens": 10}]
    new = QuotaManager(clock)
    new.restore_spend(data)
    assert new.scope_snapshot(P).as_json()["daily_budget"]["spent"] == pytest.approx(0.3)


def test_older_snapshots_without_open_holds_count_held_as_spent(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    admitted(old.reserve([P], 10, 0.3))
    data = old.export_spend()
    del data["open"]
    new = QuotaManager(clock)
    new.import_spend(data)
    assert new.scope_snapshot(P).as_json()["daily_budget"]["spent"] == pytest.approx(0.3)


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
    assert new.scope_snapshot(P).as_json()["daily_budget"]["spent"] == pytest.approx(0.15)
    assert new.scope_snapshot(G).as_json()["monthly_budget"]["spent"] == pytest.approx(0.1)


def test_journal_charges_settlements_in_their_own_day(clock: FakeClock) -> None:
    events: list[SpendEvent] = []
    old = QuotaManager(clock)
    old.on_spend = events.append
    old.settle(admitted(old.reserve([P], 10, 0.4)), 10, 0.4)
    clock.advance(86_400)
    old.settle(admitted(old.reserve([P], 10, 0.1)), 10, 0.1)
    new = QuotaManager(clock)
    new.restore_spend(None, events)
    snap = new.scope_snapshot(P).as_json()
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
    assert qm.scope_snapshot(P).as_json()["daily_budget"]["spent"] == pytest.approx(0.6)


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


# -- per-day counts (rpd, tpd) -----------------------------------------------------------------


def count_some(qm: QuotaManager) -> None:
    qm.configure(*P, Limits(rpd=3, tpd=1000))
    qm.settle(admitted(qm.reserve([P, G], 300, 0.0)), 250, 0.0)
    qm.settle(admitted(qm.reserve([P], 100, 0.01)), 150, 0.01)


def test_day_counts_survive_a_restart_the_same_day(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    count_some(old)
    data = old.export_spend()
    record = next(r for r in data["scopes"] if (r["kind"], r["name"]) == P)
    assert record["daily_requests"] == {"window": "2026-11-22", "settled": 2, "held": 0}
    assert record["daily_tokens"] == {"window": "2026-11-22", "settled": 400, "held": 0}
    clock.advance(3600)
    new = QuotaManager(clock)
    new.configure(*P, Limits(rpd=3, tpd=1000))
    new.import_spend(data)
    new.import_spend(data)  # idempotent
    snap = new.scope_snapshot(P).as_json()
    assert (snap["daily_requests"]["settled"], snap["daily_tokens"]["settled"]) == (2, 400)
    assert new.scope_snapshot(G).as_json()["daily_tokens"]["settled"] == 250
    assert denied(new.reserve([P], 601, 0.0)).limit == "tpd"
    admitted(new.reserve([P], 600, 0.0))
    assert denied(new.reserve([P], 0, 0.0)).limit == "rpd"


def test_day_counts_are_not_restored_into_the_next_day(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    count_some(old)
    data = old.export_spend()
    clock.advance(12 * 3600)
    new = QuotaManager(clock)
    new.import_spend(data)
    snap = new.scope_snapshot(P).as_json()
    assert (snap["daily_requests"]["settled"], snap["daily_tokens"]["settled"]) == (0, 0)


def test_spend_file_from_before_day_counts_still_loads(clock: FakeClock) -> None:
    old_format = {
        "version": 1,
        "scopes": [
            {
                "kind": "project",
                "name": "default",
                "daily": {"window": "2026-11-22", "spent_usd": 0.4, "held_usd": 0.1},
                "monthly": {"window": "2026-11", "spent_usd": 0.4, "held_usd": 0.1},
            }
        ],
        "open": [{"id": 7, "scopes": [["project", "default"]], "usd": 0.1}],
    }
    new = QuotaManager(clock)
    new.restore_spend(old_format)
    snap = new.scope_snapshot(P).as_json()
    assert snap["daily_budget"]["spent"] == pytest.approx(0.5)
    # the open hold is one request (its tokens were not recorded then)
    assert (snap["daily_requests"]["settled"], snap["daily_tokens"]["settled"]) == (1, 0)


def test_requests_in_flight_are_restored_as_counted(clock: FakeClock) -> None:
    old = QuotaManager(clock)
    old.configure(*P, Limits(rpd=2))
    admitted(old.reserve([P], 120, 0.0))  # unpriced, still listed: it counts as a request
    data = old.export_spend()
    new = QuotaManager(clock)
    new.restore_spend(data)
    snap = new.scope_snapshot(P).as_json()
    assert (snap["daily_requests"]["settled"], snap["daily_tokens"]["settled"]) == (1, 120)


def test_journal_carries_unpriced_requests_and_their_tokens(clock: FakeClock) -> None:
    events: list[SpendEvent] = []
    old = QuotaManager(clock)
    old.on_spend = events.append
    data = old.export_spend()
    old.settle(admitted(old.reserve([P], 100, 0.0)), 80, 0.0)
    old.release(admitted(old.reserve([P], 50, 0.0)))
    admitted(old.reserve([P], 30, 0.0))  # in flight at the crash
    assert [(e.op, e.tokens) for e in events] == [
        ("hold", 100),
        ("settle", 80),
        ("hold", 50),
        ("release", 0),
        ("hold", 30),
    ]
    new = QuotaManager(clock)
    new.restore_spend(data, events)
    snap = new.scope_snapshot(P).as_json()
    assert (snap["daily_requests"]["settled"], snap["daily_tokens"]["settled"]) == (2, 110)


def test_journal_charges_day_counts_to_the_day_they_settled_in(clock: FakeClock) -> None:
    events: list[SpendEvent] = []
    old = QuotaManager(clock)
    old.on_spend = events.append
    old.settle(admitted(old.reserve([P], 10, 0.0)), 10, 0.0)
    clock.advance(86_400)
    old.settle(admitted(old.reserve([P], 20, 0.0)), 25, 0.0)
    new = QuotaManager(clock)
    new.restore_spend(None, events)
    snap = new.scope_snapshot(P).as_json()
    assert (snap["daily_requests"]["settled"], snap["daily_tokens"]["settled"]) == (1, 25)


@pytest.mark.parametrize("settled", [-1, 1.5, "3", True, None])
def test_import_rejects_malformed_day_counts(qm: QuotaManager, settled: object) -> None:
    data = {
        "version": 1,
        "scopes": [
            {"kind": "p", "name": "x", "daily": {"window": "2026-11-22", "spent_usd": 1.0}},
            {
                "kind": "p",
                "name": "y",
                "daily_tokens": {"window": "2026-11-22", "settled": settled},
            },
        ],
    }
    with pytest.raises(ValueError):
        qm.import_spend(data)
    assert qm.scopes() == []
