"""How full the entry store is against its size limit, and when to say so.

Past its size limit the store evicts its oldest entries to make room (diskcache's
least-recently-stored policy): a cache that is too small for its traffic loses hits
silently. So evictions are counted (stats, metrics), and the operator is warned once when
the store crosses `warn_at` of its limit, and told again only after it has gone back below
(a margin under `warn_at`), not at every sweep while it hovers there.
"""

from __future__ import annotations

from typing import Literal

Crossing = Literal["filling", "relieved"]


class Capacity:
    def __init__(self, limit_bytes: int, *, warn_at: float = 0.8, margin: float = 0.05) -> None:
        if limit_bytes <= 0 or not 0 < warn_at <= 1:
            raise ValueError("limit_bytes must be > 0 and warn_at in (0, 1]")
        self.limit_bytes = limit_bytes
        self.warn_at = warn_at
        self.margin = margin
        self.volume = 0
        self.evicted = 0
        """Entries the store dropped for space since start (found missing by the sweep)."""
        self._warned = False

    @property
    def fill(self) -> float:
        return self.volume / self.limit_bytes

    def observe(self, volume: int, evicted: int = 0) -> Crossing | None:
        """Record a sweep's reading; returns "filling" when the store has just crossed
        `warn_at`, "relieved" when it has just gone back below it (less the margin)."""
        self.volume = volume
        self.evicted += evicted
        if not self._warned and (self.fill >= self.warn_at or evicted):
            self._warned = True
            return "filling"
        if self._warned and self.fill < self.warn_at - self.margin and not evicted:
            self._warned = False
            return "relieved"
        return None

    def as_dict(self) -> dict[str, float | int]:
        return {
            "store_bytes": self.volume,
            "store_limit_bytes": self.limit_bytes,
            "store_fill": round(self.fill, 4),
            "evicted": self.evicted,
        }
