"""The periodic sweep: expired and evicted entries leave the store and the index, and what
the store holds afterwards is read once for everything that watches it (the metrics, the
capacity warning, the size history the dashboard draws)."""

from __future__ import annotations

import asyncio
import logging

from cache_service.cache.capacity import Capacity
from cache_service.cache.semantic import SemanticCache
from cache_service.telemetry.metrics import Metrics
from cache_service.telemetry.size_history import SizeHistory

# The composition root's logger, whose name the capacity warnings always had.
log = logging.getLogger("cache_service")


async def sweep_forever(
    cache: SemanticCache,
    interval_s: float,
    metrics: Metrics,
    capacity: Capacity | None,
    history: SizeHistory | None = None,
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            swept = await asyncio.to_thread(cache.sweep)
            metrics.expired(swept.expired)
            metrics.evicted(swept.evicted)
            if swept.expired or swept.evicted:
                log.info("swept", extra={"expired": swept.expired, "evicted": swept.evicted})
            volume, entries = await asyncio.to_thread(_size, cache, capacity is not None)
            # No await from here on: a stats request sees the capacity and the history
            # of the same sweep.
            if capacity is not None and volume is not None:
                tell_capacity(capacity, capacity.observe(volume, swept.evicted))
            if history is not None:
                history.observe(entries, volume, swept.expired, swept.evicted)
        except Exception:
            log.exception("sweep failed; will try again")


def _size(cache: SemanticCache, volume: bool) -> tuple[int | None, int]:
    """The store's volume (where this process owns the store) and entries: one query each,
    once a sweep."""
    return (cache.store.volume() if volume else None), len(cache.store)


def tell_capacity(capacity: Capacity, crossing: str | None) -> None:
    figures = {"fill": round(capacity.fill, 3), "evicted": capacity.evicted}
    if crossing == "filling":
        log.warning(
            "the entry store is %.0f%% of store_size_limit_bytes (%d of %d bytes); past the "
            "limit the oldest entries are evicted: raise the limit or shorten TTLs",
            capacity.fill * 100,
            capacity.volume,
            capacity.limit_bytes,
            extra=figures,
        )
    elif crossing == "relieved":
        log.info("the entry store is back under its warning level", extra=figures)
