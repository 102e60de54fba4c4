"""The index's upkeep beside the traffic: rebuilding or restoring it at start, saving its
snapshots, and the periodic sweep of expired and evicted entries with the store's capacity
warnings. Each runs as a task of the app's lifespan, its blocking work in worker threads."""

from __future__ import annotations

import asyncio
import logging

from cache_service.backends.index_snapshot import IndexSnapshots
from cache_service.cache.capacity import Capacity
from cache_service.cache.semantic import SemanticCache
from cache_service.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


async def rebuild_index(cache: SemanticCache, snapshots: IndexSnapshots | None = None) -> None:
    if snapshots is not None:
        try:
            restored = await asyncio.to_thread(snapshots.restore)
        except Exception:
            # Reconciling failed part way: a rebuild that also forgets what the store lacks
            # puts the index back in step with the store.
            log.exception("index snapshot restore failed; rebuilding")
            count = await asyncio.to_thread(cache.rebuild, forget_missing=True)
            log.info("index rebuilt from store", extra={"entries": count})
            return
        if restored is not None:
            log.info("index restored from snapshot", extra=restored._asdict())
            return
    count = await asyncio.to_thread(cache.rebuild)
    log.info("index rebuilt from store", extra={"entries": count})
    if snapshots is not None:
        # At once: a crash before the first periodic save would pay the full rebuild again.
        await save_snapshot(snapshots)


async def save_snapshot(snapshots: IndexSnapshots) -> None:
    try:
        saved = await asyncio.to_thread(snapshots.save)
    except Exception:
        log.exception("index snapshot save failed; the last one (if any) stays")
        return
    if saved is not None:
        log.info("index snapshot saved", extra=saved._asdict())


async def snapshot_forever(snapshots: IndexSnapshots, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await save_snapshot(snapshots)


async def sweep_forever(
    cache: SemanticCache, interval_s: float, metrics: Metrics, capacity: Capacity | None
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            swept = await asyncio.to_thread(cache.sweep)
            metrics.expired(swept.expired)
            metrics.evicted(swept.evicted)
            if swept.expired or swept.evicted:
                log.info("swept", extra={"expired": swept.expired, "evicted": swept.evicted})
            if capacity is not None:
                volume = await asyncio.to_thread(cache.store.volume)
                _tell_capacity(capacity, capacity.observe(volume, swept.evicted))
        except Exception:
            log.exception("sweep failed; will try again")


def _tell_capacity(capacity: Capacity, crossing: str | None) -> None:
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
