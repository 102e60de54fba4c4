"""Recent hits by request id, shared by a fleet: a verdict that names the request
(`POST /v1/cache/feedback` with `request_id`) reaches whichever replica the load balancer
picks, not only the one that served the hit. Named by its request, a verdict carries the
similarity that served it, which is what moves a namespace's threshold (named by its entry,
it only invalidates).

Each replica remembers its hits in memory (`FeedbackLearner.served`) and here: a dict insert
on the hit path, written to Redis every `flush_s` in one pipeline, each key expiring after
`ttl_s`. So a verdict sent to another replica within `flush_s` of its hit is not found yet
(a 404 that a retry, or the entry's id, answers). With Redis away, the newest `max_pending`
hits wait for it; a verdict on one dropped can still name the entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache_service.cache.feedback import ServedHit

log = logging.getLogger("cache_service.feedback")


class ServedFeed:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        ttl_s: float = 3600.0,
        flush_s: float = 0.1,
        max_pending: int = 10_000,
    ) -> None:
        self._client = client
        self._prefix = f"{prefix}:served:"
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.flush_s = flush_s
        self.max_pending = max_pending
        self._pending: dict[str, ServedHit] = {}

    def remember(self, request_id: str, hit: ServedHit) -> None:
        self._pending[request_id] = hit
        self._bound()

    def _bound(self) -> None:
        # The newest are kept: a verdict mostly follows its hit closely.
        while len(self._pending) > self.max_pending:
            del self._pending[next(iter(self._pending))]

    async def find(self, request_id: str) -> ServedHit | None:
        """The hit served to `request_id` by any replica in the last `ttl_s`; None when
        there is none, or Redis cannot say."""
        try:
            raw = await self._client.get(self._prefix + request_id)
        except RedisError:
            return None
        if raw is None:
            return None
        try:
            return ServedHit(**json.loads(raw))
        except (TypeError, ValueError):
            return None

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for request_id, hit in batch.items():
                    value = json.dumps(dataclasses.asdict(hit))
                    pipe.set(self._prefix + request_id, value, px=self.ttl_ms)
                await pipe.execute()
        except RedisError:
            self._pending = {**batch, **self._pending}  # for the next try, oldest first
            self._bound()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception:
                log.exception("served hits not shared with the fleet; will try again")
