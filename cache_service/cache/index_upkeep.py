"""The index's upkeep beside the traffic: rebuilding or restoring it at start and saving its
snapshots (the sweep is `sweeping.py`). Each runs as a task of the app's lifespan, its
blocking work in worker threads."""

from __future__ import annotations

import asyncio
import logging

from cache_service.backends.snapshots import IndexSnapshots
from cache_service.cache.semantic import SemanticCache
from cache_service.heap import give_back

log = logging.getLogger(__name__)


async def rebuild_index(cache: SemanticCache, snapshots: IndexSnapshots | None = None) -> None:
    if snapshots is not None:
        try:
            restored = await asyncio.to_thread(snapshots.restore)  # trims before it is ready
        except Exception:
            # Reconciling failed part way: a rebuild that also forgets what the store lacks
            # puts the index back in step with the store.
            log.exception("index snapshot restore failed; rebuilding")
            await _rebuilt(cache, forget_missing=True)
            return
        if restored is not None:
            log.info("index restored from snapshot", extra=restored._asdict())
            return
    await _rebuilt(cache)
    if snapshots is not None:
        # At once: a crash before the first periodic save would pay the full rebuild again.
        await save_snapshot(snapshots)


async def _rebuilt(cache: SemanticCache, *, forget_missing: bool = False) -> None:
    count = await asyncio.to_thread(cache.rebuild, forget_missing=forget_missing)
    log.info("index rebuilt from store", extra={"entries": count})
    # Reading every entry left its pickles and lists free: given back, not kept for the
    # process's life (cache_service/heap.py).
    await asyncio.to_thread(give_back)


async def save_snapshot(snapshots: IndexSnapshots) -> None:
    try:
        saved = await asyncio.to_thread(snapshots.save)
    except Exception:
        log.exception("index snapshot save failed; the last one (if any) stays")
        return
    if saved is not None:
        log.info("index snapshot saved", extra=saved._asdict())
        await asyncio.to_thread(give_back)  # the copies it wrote out (~0.4 GB at 1M)


async def snapshot_forever(snapshots: IndexSnapshots, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await save_snapshot(snapshots)
