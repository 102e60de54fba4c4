"""Keeps one replica's vector index in step with a store shared through Redis.

Entries live in Redis for every replica; each replica's FAISS index is its own, derived
from them. At start the feed notes the event stream's last id, rebuilds the index from the
entries, then applies the stream's events from that id on: an event that both the rebuild
and the stream carry is applied twice, which is harmless (adds and deletes are idempotent),
and nothing stored after the noted id can be missed. Events follow in batches, one
add_many per scope per batch, from a blocking read in a worker thread.

Events this replica wrote itself are skipped: SemanticCache.put/delete already changed the
local index when they wrote them, and applying one late can only hurt (an add read before
the delete that follows it, applied after that delete, would put the vector back until the
delete's event comes round).

If Redis goes away the feed logs once, retries with a backoff capped at one second and
resumes from the last id it applied. If the events it needs are gone (the stream was
trimmed while it was away, or Redis lost its data) it rebuilds from the entries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from cache_service.backends.redis_store import (
    IndexEvent,
    RedisEntryStore,
    StreamTrimmed,
    parse_id,
)
from cache_service.cache.semantic import SemanticCache
from cache_service.errors import StoreUnavailable
from cache_service.heap import give_back
from cache_service.protocols import Vector

log = logging.getLogger(__name__)

BATCH = 512
"""Events read, and applied, per round trip."""

BLOCK_MS = 1000
"""How long a read waits for new events: also how long stop() may take to be obeyed."""

# The store says StoreUnavailable; redis-py's own errors are caught too in case a call
# bypasses its translation.
_DOWN = (StoreUnavailable, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class IndexFeed:
    def __init__(
        self,
        cache: SemanticCache,
        store: RedisEntryStore,
        *,
        batch: int = BATCH,
        block_ms: int = BLOCK_MS,
        first_backoff_s: float = 0.1,
        max_backoff_s: float = 1.0,
    ) -> None:
        self.cache = cache
        self.store = store
        self.batch = batch
        self.block_ms = block_ms
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.last_id = "0-0"
        """The last event applied (or covered by the last bootstrap)."""
        self.applied = 0
        """Events read and applied (own events, skipped, included)."""
        self.bootstraps = 0
        self.lag_s = 0.0
        """Age of the newest event applied, when the batch was applied; 0 once caught up.
        The event's time is Redis's clock, so skew between hosts shows up here."""
        self.connected = True
        self._stopping = False

    def bootstrap(self) -> int:
        """Rebuild the index from the store and resume the stream from where it stood just
        before; returns the live entries loaded. Blocking: run it in a worker thread."""
        mark = self.store.last_event_id()
        count = self.cache.rebuild(forget_missing=True)
        self.last_id = mark
        self.bootstraps += 1
        give_back()  # what reading every entry left free (see cache_service/heap.py)
        return count

    def step(self, block_ms: int | None = None) -> int:
        """Read the next batch of events (waiting up to `block_ms` for one) and apply it;
        returns how many were read. Rebuilds instead if the events needed are gone. Raises
        StoreUnavailable while Redis is away, having skipped nothing. Blocking."""
        try:
            events = self.store.read_events(self.last_id, self.batch, block_ms)
        except StreamTrimmed as exc:
            log.warning("index feed re-bootstraps: %s", exc)
            self.bootstrap()
            return 0
        if not events:
            self.lag_s = 0.0
            return 0
        clear_at = next((i for i, (_, e) in enumerate(events) if e.op == "clear"), None)
        if clear_at is not None:
            # Everything went: what is left is whatever the store holds now.
            self._apply([e for _, e in events[:clear_at]])
            self.bootstrap()
            self.applied += clear_at + 1
            return clear_at + 1
        self._apply([e for _, e in events])
        self.last_id = events[-1][0]
        self.applied += len(events)
        self.lag_s = max(0.0, time.time() - parse_id(self.last_id)[0] / 1000)
        return len(events)

    def _apply(self, events: list[IndexEvent]) -> None:
        # Net effect of the batch per id: any delete removes the old vector, and the last
        # add (if it came after every delete) puts the newest one back.
        deletes: dict[str, str] = {}
        adds: dict[str, IndexEvent] = {}
        for event in events:
            if event.origin == self.store.origin:
                continue
            if event.op == "del":
                deletes[event.entry_id] = event.scope
                adds.pop(event.entry_id, None)
            elif event.op == "add":
                adds[event.entry_id] = event
        rows: list[tuple[str, str, Vector | None, float | None]] = [
            (e.entry_id, e.scope, e.vector, e.expires) for e in adds.values()
        ]
        if rows or deletes:
            self.cache.apply_remote(rows, list(deletes.items()))

    async def run(self) -> None:
        """Bootstrap unless done already, then follow the stream until stop(); never raises
        for Redis being away (the cache stays not `ready` until the bootstrap). Its blocking
        reads get a thread of their own rather than one of the default executor's few,
        which the request path needs."""
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix="index-feed")
        try:
            await self._follow(loop, executor)
        finally:
            # Cancelled mid-read: the thread ends by itself within block_ms.
            executor.shutdown(wait=False)

    async def _follow(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> None:
        backoff = self.first_backoff_s
        while not self._stopping:
            try:
                if not self.bootstraps:
                    # Started without one (the usual way): rebuilt here, so a Redis away at
                    # start is waited for like one that goes away later.
                    await loop.run_in_executor(executor, self.bootstrap)
                await loop.run_in_executor(executor, self.step, self.block_ms)
            except _DOWN as exc:
                if self.connected:
                    log.warning("index feed lost Redis (%s); retrying from %s", exc, self.last_id)
                    self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            except Exception:
                # A bug must not stop the replica following the others for good.
                log.exception("index feed step failed; retrying")
                await asyncio.sleep(self.max_backoff_s)
                continue
            if not self.connected:
                log.warning("index feed reconnected; resumed after %s", self.last_id)
                self.connected = True
            backoff = self.first_backoff_s

    def stop(self) -> None:
        """Ask run() to return, within block_ms (the read it is waiting on)."""
        self._stopping = True
