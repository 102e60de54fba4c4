"""Verdicts on served hits (`POST /v1/cache/feedback`): a wrong hit is invalidated and its
namespace's threshold rises above the similarity that fooled it; the learned thresholds are
persisted. The learning itself is the pure `FeedbackLearner`; this is its owner."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cache_service.backends.jsonfile import JsonFile
from cache_service.cache.feedback import FeedbackLearner
from cache_service.cache.feedback_feed import FeedbackFeed
from cache_service.cache.semantic import SemanticCache
from cache_service.cache.served_feed import ServedFeed
from cache_service.cache.tenancy import Caller, Tenancy
from cache_service.errors import BadRequest, NotFound


@dataclass(frozen=True, slots=True)
class Judged:
    entry_id: str
    namespace: str
    invalidated: bool
    namespace_threshold: float


class Verdicts:
    def __init__(
        self,
        learner: FeedbackLearner,
        cache: SemanticCache,
        file: JsonFile,
        tenancy: Tenancy,
        fleet: FeedbackFeed | None = None,
        fleet_served: ServedFeed | None = None,
    ) -> None:
        """`fleet`: share verdicts with the other replicas (None: this process alone);
        `fleet_served`: where the hits other replicas served are found by request id."""
        self.tenancy = tenancy
        self.learner = learner
        self.cache = cache
        self.file = file
        self.fleet = fleet
        self.fleet_served = fleet_served

    async def judge(
        self, caller: Caller, *, request_id: str | None, entry_id: str | None, correct: bool
    ) -> Judged:
        """Name the hit by the request that was served it (preferred: it carries the
        similarity) or by its entry. Only the caller's own tenant's hits and entries can be
        judged: another tenant's are "not found", so no caller can invalidate another's
        entries or raise its threshold."""
        if (entry_id is None) == (request_id is None):
            raise BadRequest("give exactly one of 'entry_id' or 'request_id'", param="entry_id")
        served = self.learner.find(request_id) if request_id else None
        if served is None and request_id and self.fleet_served is not None:
            served = await self.fleet_served.find(request_id)  # served by another replica
        if served is not None and not self.tenancy.owns(caller, served.namespace):
            served = None
        if request_id and served is None:
            raise NotFound(f"no recent hit with request id {request_id!r}", param="request_id")
        entry_id = served.entry_id if served else entry_id
        assert entry_id is not None
        entry = await asyncio.to_thread(self.cache.store.get, entry_id)
        namespace = served.namespace if served else (entry.namespace if entry else None)
        if namespace is None or not self.tenancy.owns(caller, namespace):
            raise NotFound(f"no cache entry with id {entry_id!r}", param="entry_id")
        similarity = served.similarity if served and served.match == "semantic" else None
        invalidated = False
        if not correct:
            invalidated = await asyncio.to_thread(self.cache.delete, entry_id) is not None
        threshold = self.learner.record(namespace, similarity, correct)
        await asyncio.to_thread(self.file.save, self.learner.export())
        if self.fleet is not None:
            await self.fleet.publish(namespace, similarity, correct)
        return Judged(entry_id, namespace, invalidated, threshold)
