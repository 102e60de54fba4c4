"""Verdicts shared by a fleet: every replica learns from every wrong (or right) report.

Without this, a wrong hit reported through one replica raises that namespace's threshold
there only, and the others keep serving the same kind of wrong answer. Each verdict is
appended to a Redis Stream; every replica replays the stream into its own
`FeedbackLearner` at start (the stream, not a local file, is then the learner's truth) and
tails it after, applying the others' verdicts (its own were applied when it made them).
The learner is deterministic, so replicas that applied the same verdicts agree.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache_service.cache.feedback import FeedbackLearner

log = logging.getLogger("cache_service.feedback")

MAXLEN = 100_000
"""Verdicts kept (approximately): far more than any namespace needs to settle."""


class FeedbackFeed:
    def __init__(
        self, client: aioredis.Redis, *, prefix: str, origin: str, block_ms: int = 250
    ) -> None:
        """`block_ms`: how long one read waits for new verdicts; it must stay under the
        client's socket timeout, or a quiet stream reads as a dead connection."""
        self._client = client
        self.block_ms = block_ms
        self._key = f"{prefix}:feedback"
        self.origin = origin
        self._last = "0-0"
        self.applied = 0

    async def publish(self, namespace: str, similarity: float | None, correct: bool) -> None:
        """Tell the fleet about a verdict this replica has applied. A Redis failure is
        logged, not raised: the verdict still holds here."""
        fields: dict[Any, Any] = {
            "ns": namespace,
            "sim": "" if similarity is None else repr(similarity),
            "ok": "1" if correct else "0",
            "origin": self.origin,
        }
        try:
            await self._client.xadd(self._key, fields, maxlen=MAXLEN, approximate=True)
        except RedisError:
            log.warning("verdict not shared with the fleet (redis unreachable)")

    def _apply(self, learner: FeedbackLearner, events: list[Any], *, own_too: bool) -> None:
        for event_id, fields in events:
            self._last = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
            f = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in fields.items()
            }
            if not own_too and f.get("origin") == self.origin:
                continue
            try:
                similarity = float(f["sim"]) if f.get("sim") else None
                learner.record(str(f["ns"]), similarity, f.get("ok") == "1")
            except (KeyError, ValueError):
                log.warning("unreadable verdict skipped", extra={"event": self._last})
                continue
            self.applied += 1

    async def bootstrap(self, learner: FeedbackLearner) -> None:
        """Every verdict the fleet has kept, this replica's earlier ones included."""
        while True:
            start = "(" + self._last if self._last != "0-0" else "-"
            events = await self._client.xrange(self._key, min=start, count=1000)
            if not events:
                return
            self._apply(learner, events, own_too=True)

    async def run(self, learner: FeedbackLearner) -> None:
        """Tail the stream forever; a Redis outage pauses it, and it resumes where it was."""
        backoff = 0.1
        while True:
            try:
                reply = await self._client.xread(
                    {self._key: self._last}, count=500, block=self.block_ms
                )
                backoff = 0.1
            except RedisError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for _stream, events in reply or []:
                self._apply(learner, events, own_too=False)
