"""How much waiting a hit saved its caller: an estimate, since the upstream call a hit
avoided never happened.

The estimate for one hit is the median latency of the recent misses of the same model (what
a request for that model paid going upstream, lookup included) minus the hit's own latency,
never below zero. The median, not the mean: one slow or timed-out generation would otherwise
inflate every later hit's saving. Recent misses (the last `WINDOW` per model), because upstream
latency drifts with load and answer length, and a model's old misses say little about today.
Where no miss of the model has been seen yet, nothing is counted for the hit: it is counted as
unestimated instead, so a reader knows how much of the figure is missing rather than guessed.

Pure: latencies come in through `miss` and `saved`, in the order the requests finished, so
replaying the outcome log in order reproduces the live figures.
"""

from __future__ import annotations

import bisect
from collections import deque

WINDOW = 200
"""Misses per model the median is taken over."""


class _Window:
    """The last `size` latencies in arrival order and the same values kept sorted, so the
    median is a lookup (insort and removal are O(size) memmoves, cheap at 200)."""

    __slots__ = ("_order", "_sorted", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._order: deque[float] = deque()
        self._sorted: list[float] = []

    def add(self, value: float) -> None:
        if len(self._order) == self.size:
            oldest = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._order.append(value)
        bisect.insort(self._sorted, value)

    def median(self) -> float:
        s, n = self._sorted, len(self._sorted)
        mid = n // 2
        return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2


class TimeSaved:
    """Per model (already capped by the stats' label cap), the recent misses' latencies."""

    def __init__(self, window: int = WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._misses: dict[str, _Window] = {}

    def miss(self, model: str, latency_ms: float) -> None:
        """A miss of `model` that went upstream and took `latency_ms` end to end."""
        w = self._misses.get(model)
        if w is None:
            w = self._misses[model] = _Window(self.window)
        w.add(latency_ms)

    def median_ms(self, model: str) -> float | None:
        w = self._misses.get(model)
        return None if w is None else w.median()

    def saved(self, model: str, latency_ms: float) -> float | None:
        """Milliseconds a hit of `model` that took `latency_ms` saved; None where no miss of
        the model is known (count nothing for it)."""
        median = self.median_ms(model)
        return None if median is None else max(0.0, median - latency_ms)
