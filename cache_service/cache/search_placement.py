"""Where a semantic search runs: on the event loop when it is cheap, else in a thread. Only
a local store's scopes are ever searched inline (`CacheFront.reads_inline`): a search reads
its candidates from the store, and a fleet's store is across the network.

Handing a search to a worker thread and back costs ~0.3 ms here whenever the cores were idle
(waking a thread on this VM), more than a whole search of a small scope: at 1k entries the
flat scan, the candidates' reads and the guards take ~0.1 ms. So a scope whose recent
searches were that cheap is searched inline, like the exact read (`CacheFront`), and every
other one in a thread, where a 100k scope's flat scan or a million's IVF probe (~1 ms) would
otherwise stall every request the loop serves. Measured (`benchmarks/ab.py`, 1k entries,
6 interleaved rounds against the build searching in threads, this and the exact-key filter
together: `benchmarks/results/ab_inline_search.json`): semantic hit p50 6.88 → 6.39 ms, a
miss 10.59 → 10.21 ms, 32-client hits/s unchanged (317 → 315).

The cost is each scope's own measure, a moving average of its searches' time wherever they
ran, so a scope that grows (or whose store slows down) goes back to a thread by itself. A
scope not searched yet runs in a thread first.

A lookup alone in the sidecar (no other lookup in flight) searches inline up to a longer
bound, `ALONE_S`: nobody waits on the loop behind it, so it saves the hop whatever the
scope's size, and a request arriving meanwhile waits at most that long. Under concurrent
lookups the short bound holds, so a 100k or 1M scope's probes never queue the other
requests behind them. Measured (`benchmarks/ab.py`, 10k entries, 6 interleaved rounds against
the build without it: `benchmarks/results/ab_search_alone.json`): semantic hit p50
7.08 → 6.66 ms (6 of 6 rounds), a miss 10.69 → 9.83 ms, 32-client hits/s unchanged
(303 → 305).
"""

from __future__ import annotations

INLINE_S = 0.00015
"""A search at most this long (moving average) runs on the event loop: about half the thread
hop it saves, and short enough that the requests queued behind it on the loop barely
notice."""

ALONE_S = 0.002
"""A search at most this long (moving average) runs on the event loop when its lookup is the
only one in flight: an IVF probe of a million vectors with its candidates (~1.3 ms here when
recall was measured down to cos 0.71, a few tenths now), the flat scan of a scope just short
of promotion (~0.5 ms at 8k vectors, out of cache)."""

_WEIGHT = 0.2
"""Weight of the newest search in the average: a one-off slow search (a cold page, a GC
pause) does not move a scope to a thread, a scope that grew does within a few searches."""

_MAX_SCOPES = 10_000
"""Scopes remembered; past it the memory starts afresh (scopes come from requests, so their
number is the caller's to choose), which only costs each scope one search in a thread."""


class SearchPlacement:
    def __init__(self, inline_s: float = INLINE_S, alone_s: float = ALONE_S) -> None:
        self.inline_s = inline_s
        self.alone_s = alone_s
        self._cost: dict[str, float] = {}

    def inline(self, scope: str, *, alone: bool = False) -> bool:
        """Whether to search `scope` on the event loop; `alone`: no other lookup is in
        flight."""
        cost = self._cost.get(scope)
        return cost is not None and cost <= (self.alone_s if alone else self.inline_s)

    def took(self, scope: str, seconds: float) -> None:
        """Called from whichever thread ran the search: a dict read and write, each atomic,
        and a lost update only delays a move by one search."""
        cost = self._cost.get(scope)
        if cost is None and len(self._cost) >= _MAX_SCOPES:
            self._cost.clear()
        self._cost[scope] = seconds if cost is None else cost + _WEIGHT * (seconds - cost)
