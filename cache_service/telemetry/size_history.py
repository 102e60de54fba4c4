"""The cache's size and evictions over time: one sample per sweep (a minute by default),
the last `keep` of them in memory.

In memory only, since the server started: the store itself is the truth about its size now,
and a day of samples is what an operator looks at to see the cache filling up or evicting.
Counts are cumulative since start (expired, evicted), so any sample pair gives what happened
between them and thinning the samples for a chart loses nothing of the totals.

Pure: the sweep loop hands in its readings; the clock says when.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from cache_service.protocols import Clock

KEEP = 1440
"""A day of samples at the default sweep interval of a minute."""
MAX_POINTS = 120
"""Samples returned for a chart at most: the page is polled every few seconds."""


@dataclass(frozen=True, slots=True)
class SizeSample:
    time: float
    entries: int
    """Entries in the store after the sweep."""
    store_bytes: int | None
    """The store's volume (None where it is not this process's: a shared Redis)."""
    expired: int
    """Expired entries removed since start."""
    evicted: int
    """Entries the store dropped for space since start."""


class SizeHistory:
    def __init__(self, clock: Clock, keep: int = KEEP) -> None:
        if keep < 2:
            raise ValueError("keep must be >= 2")
        self.clock = clock
        self.started_at = clock.now()
        self._samples: deque[SizeSample] = deque(maxlen=keep)
        self._expired = 0
        self._evicted = 0

    def observe(self, entries: int, store_bytes: int | None, expired: int, evicted: int) -> None:
        """One sweep's reading: the store's size after it, and what it removed."""
        self._expired += expired
        self._evicted += evicted
        self._samples.append(
            SizeSample(self.clock.now(), entries, store_bytes, self._expired, self._evicted)
        )

    def samples(self, since: float | None = None, until: float | None = None) -> list[SizeSample]:
        return [
            s
            for s in self._samples
            if (since is None or s.time >= since) and (until is None or s.time < until)
        ]

    def view(
        self,
        since: float | None = None,
        until: float | None = None,
        max_points: int = MAX_POINTS,
    ) -> dict[str, Any]:
        """The samples in [since, until), thinned to `max_points` (the first and the last
        always kept, so the range's ends and its evictions are exact), and the evictions and
        expiries within the range (the first sample's count is the baseline, so a range
        starting before the first sample counts from the server's start)."""
        picked = self.samples(since, until)
        within = {"evicted": 0, "expired": 0}
        if picked:
            before = [s for s in self._samples if s.time < picked[0].time]
            # Counted from the sample before the range, else from zero at start.
            base = before[-1] if before else None
            for name in within:
                within[name] = getattr(picked[-1], name) - (getattr(base, name) if base else 0)
        return {
            "since_start": self.started_at,
            "samples_kept": self._samples.maxlen,
            "evicted_in_range": within["evicted"],
            "expired_in_range": within["expired"],
            "samples": [asdict(s) for s in _thin(picked, max_points)],
        }


def _thin(samples: list[SizeSample], max_points: int) -> list[SizeSample]:
    """At most `max_points` samples, evenly spaced, the first and last included."""
    n = len(samples)
    if n <= max_points:
        return samples
    if max_points < 2:
        return samples[-1:]
    step = (n - 1) / (max_points - 1)
    return [samples[round(i * step)] for i in range(max_points)]
