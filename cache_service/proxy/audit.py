"""Sampled audits of semantic hits: ask upstream too (within quota) and compare the answers'
embeddings. Agreement estimates how often semantic hits are right in live traffic, which no
offline benchmark can tell.

The tally is saved to `audit.json` in the data_dir after each verdict (where the app gives a
file), so the report CLI, which reads only files, has it too, and a restart keeps it. Audits
are rare (each is an upstream call), so one small atomic write per verdict is cheap; still,
only one write is in flight at a time and a burst of verdicts is written once, as it ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from cache_service.backends.jsonfile import JsonFile
from cache_service.cache.batcher import EmbeddingBatcher
from cache_service.cache.feedback import AuditTally
from cache_service.errors import ServiceError
from cache_service.pricing import NO_USAGE
from cache_service.protocols import Entry
from cache_service.proxy.context import RequestContext
from cache_service.telemetry.metrics import Metrics
from cache_service.upstream.chain import UpstreamChain

log = logging.getLogger("cache_service.audit")


class Auditor:
    def __init__(
        self,
        chain: UpstreamChain,
        batcher: EmbeddingBatcher,
        metrics: Metrics,
        *,
        sample_rate: float,
        agree_similarity: float,
        draw: Callable[[], float] = random.random,
        file: JsonFile | None = None,
    ) -> None:
        self.chain = chain
        self.batcher = batcher
        self.metrics = metrics
        self.sample_rate = sample_rate
        self.agree_similarity = agree_similarity
        self.draw = draw
        self.tally = AuditTally()
        self.tasks: set[asyncio.Task[None]] = set()
        self.file = file
        self._dirty = False
        # Not among `tasks`, which shutdown cancels: `flush` waits for it instead.
        self._writer: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """The tally saved before a restart (none: an empty one)."""
        if self.file is not None:
            self.tally = AuditTally.of(await asyncio.to_thread(self.file.load))

    def maybe_audit(self, ctx: RequestContext, entry: Entry, similarity: float) -> None:
        if self.sample_rate <= 0 or self.draw() >= self.sample_rate:
            return
        task = asyncio.create_task(self._audit(ctx, entry, similarity))
        self.tasks.add(task)  # held until done, or the loop may drop it
        task.add_done_callback(self.tasks.discard)

    async def _audit(self, ctx: RequestContext, entry: Entry, similarity: float) -> None:
        flavor = ctx.flavor
        body = {k: v for k, v in ctx.body.items() if k not in ("stream", "stream_options")}
        try:
            call = await self.chain.send(flavor, body, ctx.headers, ctx.project)
        except ServiceError:
            self._audited("skipped")
            return
        async with call.hold:
            resp = call.result
            try:
                fresh = resp.json()
            except ValueError:
                fresh = None
            if resp.status >= 400 or not isinstance(fresh, dict):
                await call.hold.release()
                self._audited("skipped")
                return
            if not flavor.valid(fresh):
                # Answered, so perhaps billed (settled at the estimate), but no answer to
                # compare: a `{"nope": 1}` would count as a disagreement.
                await call.hold.settle(NO_USAGE)
                self._audited("skipped")
                return
            await call.hold.settle(flavor.usage(fresh))
        a, b = flavor.answer_text(entry.response), flavor.answer_text(fresh)
        try:
            va = await self.batcher.embed(a, 10.0)
            vb = await self.batcher.embed(b, 10.0)
        except TimeoutError:
            self._audited("skipped")
            return
        agreed = float(va @ vb) >= self.agree_similarity
        self._audited("agreed" if agreed else "disagreed")
        log.info(
            "audit",
            extra={
                "request_id": ctx.request_id,
                "entry": entry.id,
                "agreed": agreed,
                "similarity": similarity,
            },
        )

    def _audited(self, verdict: str) -> None:
        tally = self.tally
        if verdict == "skipped":
            tally.skipped += 1
        else:
            tally.audited += 1
            tally.agreed += verdict == "agreed"
        self.metrics.audit(verdict, tally.as_dict()["estimated_precision"])
        if self.file is not None:
            self._dirty = True
            if self._writer is None:
                self._writer = asyncio.create_task(self._save(self.file))

    async def _save(self, file: JsonFile) -> None:
        """Write the tally until no verdict arrived during the last write."""
        try:
            while self._dirty:
                self._dirty = False
                await asyncio.to_thread(file.save, self.tally.as_dict())
        except OSError:
            log.exception("audit tally not saved", extra={"path": str(file.path)})
        finally:
            self._writer = None

    async def flush(self) -> None:
        """At shutdown: the write in progress, and any verdict it has not written yet."""
        if self._writer is not None:
            await self._writer
