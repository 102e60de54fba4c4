"""Property tests for the guarantees stated in ``cache_service.quota.manager``'s docstring.

Windows are checked only at their start points ``s = t_i`` (an admission time): any 60 s
window holding admissions is covered by the one starting at its first admission, so that is
every window that matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_service.quota.limits import Denial, Limits
from cache_service.quota.manager import QuotaManager, Reservation, SpendEvent
from cache_service.quota.windows import SlidingWindow, window_key, window_reset_at
from tests.fakes import FakeClock

W = 60.0
P = ("project", "p")
G = ("global", "total")
FAST = settings(max_examples=100, deadline=None)


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


Op = tuple[object, ...]


def flatten(ops: list[Op | list[Op]]) -> list[Op]:
    """Inline the bursts (lists of reserves) into one flat sequence of operations."""
    return [o for item in ops for o in (item if isinstance(item, list) else [item])]


# Steps that land on and around the window edge as well as arbitrary ones.
steps = st.one_of(
    st.sampled_from([0.0, 0.001, 1.0, 30.0, 59.999, 60.0, 60.001]),
    st.floats(min_value=0.0, max_value=90.0, allow_nan=False),
)


@dataclass
class Admitted:
    at: float
    scopes: tuple[tuple[str, str], ...]
    estimate: int
    reservation: Reservation
    final: int  # estimate while in flight, actual once settled, 0 once released
    released: bool = False
    overrun: int = 0


EDGE_OFFSETS = [-1e-3, -1e-6, -1e-9, 0.0, 1e-9, 1e-3]

reserve = st.tuples(
    st.just("reserve"),
    st.sampled_from([(P,), (G,), (P, G)]),
    st.integers(min_value=0, max_value=400),
)
rate_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), steps),
        # Jump to just before / at / after the window edge of one of the oldest admissions
        # still counting, where an off-by-a-little window would show.
        st.tuples(st.just("edge"), st.integers(0, 2), st.sampled_from(EDGE_OFFSETS)),
        # Bursts: limits are only tested when they are full.
        st.lists(reserve, min_size=1, max_size=6),
        reserve,
        st.tuples(st.just("settle"), st.integers(0, 1000), st.integers(min_value=0, max_value=600)),
        st.tuples(st.just("release"), st.integers(0, 1000)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    tpm=st.tuples(st.integers(100, 1200), st.integers(100, 1200)),
    ops=rate_ops,
)
def test_every_60s_window_respects_rpm_and_tpm(
    rpm: tuple[int, int],
    tpm: tuple[int, int],
    ops: list[Op | list[Op]],
) -> None:
    """For each scope and every window [s, s + 60):
    * admitted, unreleased requests <= rpm;
    * tokens charged for requests admitted in it (actual once settled, estimate in flight,
      0 released) <= tpm + their overruns (actual - estimate where positive);
    and a denied reserve changes nothing anywhere (all-or-nothing)."""
    clock = FakeClock(ts("2026-11-22T12:00:00"))
    qm = QuotaManager(clock)
    limits = {P: (rpm[0], tpm[0]), G: (rpm[1], tpm[1])}
    for (kind, name), (r, t) in limits.items():
        qm.configure(kind, name, Limits(rpm=r, tpm=t))
    log: list[Admitted] = []
    pending: list[Admitted] = []

    for op in flatten(ops):
        if op[0] == "advance":
            assert isinstance(op[1], float)
            clock.advance(op[1])
        elif op[0] == "edge":
            counting = [e.at for e in log if e.at + W > clock.mono]
            if counting:
                index, offset = op[1], op[2]
                assert isinstance(index, int) and isinstance(offset, float)
                target = counting[min(index, len(counting) - 1)] + W + offset
                clock.advance(max(0.0, target - clock.mono))
        elif op[0] == "reserve":
            scopes, tokens = op[1], op[2]
            assert isinstance(scopes, tuple) and isinstance(tokens, int)
            before = qm.snapshot().as_json()
            result = qm.reserve(list(scopes), tokens, 0.0)
            if isinstance(result, Denial):
                assert qm.snapshot().as_json() == before
                assert result.retryable == (tokens <= limits[result.scope][1])
            else:
                entry = Admitted(clock.mono, scopes, tokens, result, tokens)
                log.append(entry)
                pending.append(entry)
        elif pending:
            index = op[1]
            assert isinstance(index, int)
            entry = pending.pop(index % len(pending))
            if op[0] == "settle":
                actual = op[2]
                assert isinstance(actual, int)
                qm.settle(entry.reservation, actual, 0.0)
                entry.final = actual
                entry.overrun = max(0, actual - entry.estimate)
            else:
                qm.release(entry.reservation)
                entry.final = 0
                entry.released = True

    for scope, (r, t) in limits.items():
        mine = [e for e in log if scope in e.scopes]
        for start in mine:
            # exactly the implementation's "still counts" test: at + 60 > now
            window = [e for e in mine if start.at <= e.at and e.at < start.at + W]
            assert sum(not e.released for e in window) <= r
            assert sum(e.final for e in window) <= t + sum(e.overrun for e in window)


@FAST
@given(
    capacity=st.integers(1, 500),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("advance"), steps),
            st.tuples(st.just("take"), st.integers(0, 200)),
        ),
        max_size=60,
    ),
)
def test_sliding_window_retry_after_is_exact(
    capacity: int, ops: list[tuple[str, float | int]]
) -> None:
    """Waiting exactly ``time_until`` always suffices, and a millisecond less never does."""
    window = SlidingWindow(capacity)
    now = 5000.0
    for kind, value in ops:
        if kind == "advance":
            now += value
            continue
        amount = int(value)
        if window.try_take(amount, now) is not None:
            continue
        wait = window.time_until(amount, now)
        if amount > capacity:
            assert wait == float("inf")
            continue
        assert wait > 0
        # the earlier time first: the window treats a later call at an earlier time as "now"
        if wait > 1e-3:
            assert not window.admits(amount, now + wait - 1e-3)
        assert window.admits(amount, now + wait)
        now += wait


spend = st.tuples(st.just("reserve"), st.one_of(st.just(0), st.integers(0, 60)))  # cents
budget_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("advance"),
            st.one_of(st.floats(0.0, 6 * 3600.0, allow_nan=False), st.just(1.0)),
        ),
        st.lists(spend, min_size=1, max_size=6),  # concurrent in-flight holds
        spend,
        st.tuples(st.just("settle"), st.integers(0, 1000), st.floats(0.0, 1.5)),
        st.tuples(st.just("release"), st.integers(0, 1000)),
    ),
    max_size=80,
)


@FAST
@given(
    daily_cents=st.integers(0, 200),
    monthly_cents=st.integers(0, 500),
    overruns=st.booleans(),
    ops=budget_ops,
)
def test_budgets_never_exceeded_by_admitted_estimates(
    daily_cents: int,
    monthly_cents: int,
    overruns: bool,
    ops: list[Op | list[Op]],
) -> None:
    """Every admission has ``used + estimate <= limit`` in both calendar windows (used =
    spent + held). Without overruns (actual <= estimate) ``used <= limit`` at all times, and
    the actual spend booked in any one UTC day / month stays within its limit."""
    clock = FakeClock(ts("2026-11-30T18:00:00"))  # crosses a day and a month boundary
    qm = QuotaManager(clock)
    daily, monthly = daily_cents / 100, monthly_cents / 100
    qm.configure(*P, Limits(daily_budget_usd=daily, monthly_budget_usd=monthly))
    pending: list[tuple[Reservation, float]] = []
    booked: dict[str, float] = {}
    eps = 1e-9

    for op in flatten(ops):
        if op[0] == "advance":
            assert isinstance(op[1], float)
            clock.advance(op[1])
        elif op[0] == "reserve":
            assert isinstance(op[1], int)
            cost = op[1] / 100
            snap = qm.scope_snapshot(P).as_json()
            result = qm.reserve([P], 1, cost)
            if isinstance(result, Reservation):
                assert snap["daily_budget"]["used"] + cost <= daily + eps
                assert snap["monthly_budget"]["used"] + cost <= monthly + eps
                assert snap["daily_budget"]["used"] < daily
                pending.append((result, cost))
            else:
                assert result.limit in ("daily_budget", "monthly_budget")
        elif pending:
            assert isinstance(op[1], int)
            reservation, cost = pending.pop(op[1] % len(pending))
            if op[0] == "settle":
                assert isinstance(op[2], float)
                actual = round(cost * op[2], 2) if overruns else round(cost * min(1.0, op[2]), 2)
                qm.settle(reservation, 1, actual)
                for key in (clock_day(clock), clock_day(clock)[:7]):
                    booked[key] = booked.get(key, 0.0) + actual
            else:
                qm.release(reservation)
        if not overruns:
            snap = qm.scope_snapshot(P).as_json()
            assert snap["daily_budget"]["used"] <= daily + eps
            assert snap["monthly_budget"]["used"] <= monthly + eps

    if not overruns:
        for key, spent in booked.items():
            assert spent <= (daily if len(key) == 10 else monthly) + eps


def clock_day(clock: FakeClock) -> str:
    return datetime.fromtimestamp(clock.wall, tz=UTC).strftime("%Y-%m-%d")


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("reserve"), st.integers(0, 500)),
            st.tuples(st.just("settle"), st.integers(0, 30), st.integers(0, 800)),
            st.tuples(st.just("release"), st.integers(0, 30)),
            st.tuples(st.just("tick"), st.floats(0.0, 3600.0)),
        ),
        max_size=40,
    ),
    snapshot_at=st.integers(0, 40),
)
def test_snapshot_plus_journal_recovers_every_charge(
    ops: list[tuple[object, ...]], snapshot_at: int
) -> None:
    """Whenever the last snapshot was taken, a manager restored from it and the journal
    written after it has spent exactly what the live one had used (spent + held: a hold in
    flight at a crash counts as spent)."""
    clock = FakeClock(ts("2026-11-22T08:00:00"))
    live = QuotaManager(clock)
    journal: list[object] = []
    live.on_spend = journal.append
    open_: list[Reservation] = []
    snapshot, covered = live.export_spend(), 0
    for i, op in enumerate(ops):
        if i == snapshot_at:
            snapshot, covered = live.export_spend(), len(journal)
        if op[0] == "reserve":
            r = live.reserve([P, G], 10, int(op[1]) / 1000)  # type: ignore[call-overload]
            if isinstance(r, Reservation):
                open_.append(r)
        elif op[0] in ("settle", "release") and open_:
            r = open_.pop(int(op[1]) % len(open_))  # type: ignore[call-overload]
            if op[0] == "settle":
                live.settle(r, 10, int(op[2]) / 1000)  # type: ignore[call-overload]
            else:
                live.release(r)
        elif op[0] == "tick":
            clock.advance(float(op[1]))  # type: ignore[arg-type]
    restored = QuotaManager(clock)
    restored.restore_spend(snapshot, journal[covered:])  # type: ignore[arg-type]
    for scope in (P, G):
        for which in ("daily_budget", "monthly_budget"):
            before = live.scope_snapshot(scope).as_json()[which]
            after = restored.scope_snapshot(scope).as_json()[which]
            assert after["spent"] == pytest.approx(before["used"], abs=1e-9), (scope, which)


# -- per-day limits ----------------------------------------------------------------------------


@dataclass
class DayAdmitted:
    day: str  # UTC day of the admission
    scopes: tuple[tuple[str, str], ...]
    estimate: int
    reservation: Reservation
    final: int  # estimate while in flight, actual once settled, 0 once released
    charged_to: str | None = None  # UTC day of the settlement
    released: bool = False
    overrun: int = 0


day_reserve = st.tuples(
    st.just("reserve"),
    st.sampled_from([(P,), (G,), (P, G)]),
    st.integers(min_value=0, max_value=500),
)
day_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("advance"),
            st.one_of(st.floats(0.0, 8 * 3600.0, allow_nan=False), st.sampled_from([1.0, 60.0])),
        ),
        # To just before / at / after the next 00:00 UTC, where a day boundary that is off by a
        # little would show.
        st.tuples(st.just("midnight"), st.sampled_from([-1.0, -1e-3, 0.0, 1e-3, 1.0])),
        st.lists(day_reserve, min_size=1, max_size=6),
        day_reserve,
        st.tuples(st.just("settle"), st.integers(0, 1000), st.integers(min_value=0, max_value=700)),
        st.tuples(st.just("release"), st.integers(0, 1000)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    rpd=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    tpd=st.tuples(st.integers(100, 1500), st.integers(100, 1500)),
    ops=day_ops,
)
def test_every_utc_day_respects_rpd_and_tpd(
    rpd: tuple[int, int], tpd: tuple[int, int], ops: list[Op | list[Op]]
) -> None:
    """For each scope and every UTC day, counting requests either by the day they were
    admitted in or by the day they were charged to (settled in):
    * requests (admitted and not released) <= rpd;
    * tokens (actual once settled, estimate in flight, 0 released) <= tpd + their overruns
      (actual - estimate where positive): the tpm rule, per day. An overrun is charged in full
      to the day it settles in and holds that day's later requests back, never refused;
    and a denied reserve changes nothing anywhere, waiting at most until the next day."""
    clock = FakeClock(ts("2026-11-29T20:00:00"))  # crosses days, a month end too
    qm = QuotaManager(clock)
    limits = {P: (rpd[0], tpd[0]), G: (rpd[1], tpd[1])}
    for (kind, name), (r, t) in limits.items():
        qm.configure(kind, name, Limits(rpd=r, tpd=t))
    log: list[DayAdmitted] = []
    pending: list[DayAdmitted] = []

    for op in flatten(ops):
        if op[0] == "advance":
            assert isinstance(op[1], float)
            clock.advance(op[1])
        elif op[0] == "midnight":
            assert isinstance(op[1], float)
            target = window_reset_at("day", clock.wall) + op[1]
            clock.advance(max(0.0, target - clock.wall))
        elif op[0] == "reserve":
            scopes, tokens = op[1], op[2]
            assert isinstance(scopes, tuple) and isinstance(tokens, int)
            before = qm.snapshot().as_json()
            result = qm.reserve(list(scopes), tokens, 0.0)
            if isinstance(result, Denial):
                assert qm.snapshot().as_json() == before
                assert result.limit in ("rpd", "tpd")
                assert result.retryable == all(tokens <= limits[s][1] for s in scopes)
                if result.retryable:
                    assert 0 < result.retry_after_s <= 86_400
            else:
                entry = DayAdmitted(window_key("day", clock.wall), scopes, tokens, result, tokens)
                log.append(entry)
                pending.append(entry)
        elif pending:
            index = op[1]
            assert isinstance(index, int)
            entry = pending.pop(index % len(pending))
            if op[0] == "settle":
                actual = op[2]
                assert isinstance(actual, int)
                qm.settle(entry.reservation, actual, 0.0)
                entry.final = actual
                entry.overrun = max(0, actual - entry.estimate)
                entry.charged_to = window_key("day", clock.wall)
            else:
                qm.release(entry.reservation)
                entry.final = 0
                entry.released = True

    for scope, (r, t) in limits.items():
        mine = [e for e in log if scope in e.scopes]
        for day in {e.day for e in mine} | {e.charged_to for e in mine if e.charged_to}:
            for group in (
                [e for e in mine if e.day == day],
                [e for e in mine if e.charged_to == day],
            ):
                assert sum(not e.released for e in group) <= r, (scope, day)
                assert sum(e.final for e in group) <= t + sum(e.overrun for e in group)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("reserve"), st.integers(0, 500), st.integers(0, 3)),
            st.tuples(st.just("settle"), st.integers(0, 30), st.integers(0, 800)),
            st.tuples(st.just("release"), st.integers(0, 30)),
            st.tuples(st.just("tick"), st.floats(0.0, 6 * 3600.0)),
        ),
        max_size=40,
    ),
    snapshot_at=st.integers(0, 40),
)
def test_restart_keeps_the_days_request_and_token_counts(
    ops: list[tuple[object, ...]], snapshot_at: int
) -> None:
    """Whenever the last snapshot was taken, a manager restored from it and the journal
    written after it has today's requests and tokens as the live one had them (settled +
    held: a request in flight at a crash counts, at its estimate), so a restart neither
    resets nor doubles rpd/tpd. Unpriced requests ($0) count too."""
    clock = FakeClock(ts("2026-11-22T14:00:00"))
    live = QuotaManager(clock)
    journal: list[SpendEvent] = []
    live.on_spend = journal.append
    open_: list[Reservation] = []
    snapshot, covered = live.export_spend(), 0
    for i, op in enumerate(ops):
        if i == snapshot_at:
            snapshot, covered = live.export_spend(), len(journal)
        if op[0] == "reserve":
            tokens, cents = int(op[1]), int(op[2])  # type: ignore[call-overload]
            r = live.reserve([P, G], tokens, cents / 100)
            if isinstance(r, Reservation):
                open_.append(r)
        elif op[0] in ("settle", "release") and open_:
            r = open_.pop(int(op[1]) % len(open_))  # type: ignore[call-overload]
            if op[0] == "settle":
                live.settle(r, int(op[2]), r.cost_usd)  # type: ignore[call-overload]
            else:
                live.release(r)
        elif op[0] == "tick":
            clock.advance(float(op[1]))  # type: ignore[arg-type]
    restored = QuotaManager(clock)
    restored.restore_spend(snapshot, journal[covered:])
    for scope in (P, G):
        for which in ("daily_requests", "daily_tokens"):
            before = live.scope_snapshot(scope).as_json()[which]
            after = restored.scope_snapshot(scope).as_json()[which]
            assert after["settled"] == before["used"], (scope, which)
