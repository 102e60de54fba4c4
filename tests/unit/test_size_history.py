"""The size history: one sample per sweep in a bounded ring, cumulative counts, a time range
and thinning that keep the range's evictions exact."""

from __future__ import annotations

import pytest

from cache_service.telemetry.size_history import SizeHistory
from tests.fakes import FakeClock


def test_samples_are_cumulative_bounded_and_timed_by_the_clock() -> None:
    clock = FakeClock()
    h = SizeHistory(clock, keep=3)
    assert h.view()["samples"] == []
    for entries, evicted in ((10, 0), (20, 2), (25, 3), (30, 0)):
        clock.advance(60)
        h.observe(entries, entries * 100, expired=1, evicted=evicted)
    samples = h.view()["samples"]
    # The oldest fell out of the ring of 3; counts are since start, not per sweep.
    assert [s["entries"] for s in samples] == [20, 25, 30]
    assert [s["evicted"] for s in samples] == [2, 5, 5]
    assert [s["expired"] for s in samples] == [2, 3, 4]
    assert [s["time"] for s in samples] == [clock.wall - 120, clock.wall - 60, clock.wall]
    assert samples[0]["store_bytes"] == 2000
    with pytest.raises(ValueError):
        SizeHistory(clock, keep=1)


def test_time_range_counts_evictions_within_it() -> None:
    clock = FakeClock()
    h = SizeHistory(clock)
    t0 = clock.wall
    for evicted in (1, 2, 4, 8):
        clock.advance(60)
        h.observe(5, None, expired=0, evicted=evicted)
    whole = h.view()
    assert whole["evicted_in_range"] == 15 and whole["since_start"] == t0
    # From the third sample on: counted from the sample before the range.
    late = h.view(since=t0 + 180)
    assert [s["evicted"] for s in late["samples"]] == [7, 15]
    assert late["evicted_in_range"] == 12
    early = h.view(since=t0, until=t0 + 121)
    assert early["evicted_in_range"] == 3 and len(early["samples"]) == 2
    assert h.view(since=clock.wall + 1)["evicted_in_range"] == 0


def test_thinning_keeps_both_ends_and_the_totals() -> None:
    clock = FakeClock()
    h = SizeHistory(clock)
    for i in range(1000):
        clock.advance(60)
        h.observe(i, None, expired=0, evicted=1)
    view = h.view(max_points=50)
    samples = view["samples"]
    assert len(samples) == 50
    assert samples[0]["entries"] == 0 and samples[-1]["entries"] == 999
    assert view["evicted_in_range"] == 1000
    times = [s["time"] for s in samples]
    assert times == sorted(times)
