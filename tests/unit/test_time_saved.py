"""The time-saved estimate: the median of a model's recent misses minus each hit's own
latency, nothing for a hit of a model with no known miss, and the same from a replay."""

from __future__ import annotations

import pytest

from cache_service.telemetry.events import OutcomeEvent
from cache_service.telemetry.stats import Outcome, Stats, replay_stats, timed
from cache_service.telemetry.time_saved import TimeSaved


def test_median_of_the_recent_misses_minus_the_hit() -> None:
    t = TimeSaved(window=3)
    assert t.saved("m", 5.0) is None  # no miss known: count nothing
    t.miss("m", 100.0)
    assert t.saved("m", 5.0) == 95.0
    t.miss("m", 300.0)
    assert t.median_ms("m") == 200.0  # even count: the middle two averaged
    t.miss("m", 1000.0)  # a slow outlier moves the median only to the middle value
    assert t.median_ms("m") == 300.0
    t.miss("m", 10.0)  # the window forgets the oldest (100): 300, 1000, 10
    assert t.median_ms("m") == 300.0
    t.miss("m", 20.0)  # 1000, 10, 20
    assert t.median_ms("m") == 20.0
    assert t.saved("m", 50.0) == 0.0  # a hit slower than the misses saved nothing
    assert t.saved("other", 1.0) is None  # per model


def test_window_keeps_duplicates_apart() -> None:
    t = TimeSaved(window=2)
    for v in (7.0, 7.0, 7.0, 1.0):
        t.miss("m", v)
    assert t.median_ms("m") == 4.0
    with pytest.raises(ValueError):
        TimeSaved(window=0)


def test_stats_sum_the_estimate_per_row_and_count_unestimated_hits() -> None:
    s = Stats()
    s.record("ns", "a", Outcome.EXACT_HIT, latency_ms=2.0)  # before any miss of "a"
    s.record("ns", "a", Outcome.MISS, latency_ms=800.0)
    s.record("ns", "a", Outcome.BYPASS, latency_ms=5.0)  # not a miss: ignored
    s.record("ns", "a", Outcome.SEMANTIC_HIT, latency_ms=30.0)
    s.record("ns", "a", Outcome.EXACT_HIT, latency_ms=2.0)
    s.record("ns", "b", Outcome.EXACT_HIT, latency_ms=1.0)  # model b: no miss known
    s.record("ns", "a", Outcome.EXACT_HIT)  # no latency given: unestimated
    snap = s.snapshot()
    assert snap["total"]["time_saved_ms"] == (800 - 30) + (800 - 2)
    assert snap["total"]["hits_unestimated"] == 3
    assert snap["by_model"]["b"]["time_saved_ms"] == 0.0
    # Additive: what a fleet's merge adds up.
    other = Stats()
    other.merge(s.rows())
    assert other.snapshot()["total"]["time_saved_ms"] == snap["total"]["time_saved_ms"]


def test_replaying_the_log_reproduces_the_live_estimate() -> None:
    outcomes = [
        (Outcome.MISS, 400.0),
        (Outcome.EXACT_HIT, 1.0),
        (Outcome.MISS, 600.0),
        (Outcome.SEMANTIC_HIT, 20.0),
    ]
    live = Stats()
    events = []
    for i, (o, ms) in enumerate(outcomes):
        live.record("ns", "m", o, latency_ms=ms)
        status = 200 if o is Outcome.MISS else None
        events.append(
            OutcomeEvent(
                float(i), f"r{i}", "ns", "p", "m", o, latency_ms=ms, upstream_status=status
            ),
        )
    # A miss of the cache API's lookup (no upstream call) leaves the estimate alone.
    events.append(OutcomeEvent(9.0, "lookup", "ns", "p", "m", Outcome.MISS, latency_ms=0.5))
    events.append(OutcomeEvent(10.0, "hit", "ns", "p", "m", Outcome.EXACT_HIT, latency_ms=0))
    live.record("ns", "m", Outcome.MISS, latency_ms=timed(Outcome.MISS, 0.5, None))
    live.record("ns", "m", Outcome.EXACT_HIT, latency_ms=timed(Outcome.EXACT_HIT, 0, None))
    expected = (400 - 1) + (500 - 20) + 500
    assert live.snapshot()["total"]["time_saved_ms"] == expected
    assert replay_stats(events).snapshot()["total"]["time_saved_ms"] == expected


def test_durations_read_as_waiting() -> None:
    from cache_service.report.text import waited

    assert [waited(x) for x in (None, 72.5, 850, 12_400, 185_000, 7_620_000)] == [
        "—", "73 ms", "850 ms", "12.4 s", "3 min 05 s", "2 h 07 min"
    ]  # fmt: skip
