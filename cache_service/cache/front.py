"""The cache as the request path sees it, async: look a request up (exact key, then embed,
search and the matching chain) and store an answer. The proxy and the cache-lookup API both
go through here, so a lookup and a store mean the same thing whichever door they came in.

Blocking work (store reads, FAISS, guards) goes to worker threads and the model runs in its
batcher's thread; this module only decides and awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cache_service.cache.batcher import EmbeddingBatcher, ModelBusy
from cache_service.cache.feedback import FeedbackLearner
from cache_service.cache.keys import RequestKeys
from cache_service.cache.matching import Verifier, choose
from cache_service.cache.search_placement import SearchPlacement
from cache_service.cache.semantic import Lookup, SemanticCache
from cache_service.cache.write_behind import WriteBehind
from cache_service.errors import StoreUnavailable
from cache_service.pricing import Usage
from cache_service.protocols import MAX_TOKENS, Entry, Vector
from cache_service.telemetry.events import StageTimer

log = logging.getLogger("cache_service.cache")


@dataclass(slots=True)
class Found:
    """What one lookup learned: the hit (if any), how close a miss came, and the prompt's
    embedding (reused to store the answer a miss fetches)."""

    hit: Lookup | None = None
    searched: Lookup | None = None
    vector: Vector | None = None
    embed_timeout: bool = False
    too_old: bool = False
    """A hit was found but refused: older than the caller's max-age."""

    def miss_reason(self) -> str:
        """Why this lookup served nothing, for the outcome log (see
        `OutcomeEvent.rejected_by`)."""
        if self.too_old:
            return "max_age"
        if self.embed_timeout:
            return "embed_timeout"
        if self.searched is None:
            return "not_searched"
        return self.searched.reason


def servable(entry: Entry) -> bool:
    """Its answer is a standard JSON object (`answer_json` checked that when the entry was
    made) and its token counts plain ints the pricing can multiply."""
    counts = (entry.prompt_tokens, entry.completion_tokens, entry.cached_tokens)
    if not all(type(n) is int and 0 <= n <= MAX_TOKENS for n in counts):
        return False
    return entry.body.startswith("{")


class CacheFront:
    def __init__(
        self,
        cache: SemanticCache,
        batcher: EmbeddingBatcher,
        learner: FeedbackLearner,
        *,
        embed_timeout_s: float,
        default_ttl_s: float,
        verifiers: Sequence[Verifier] = (),
        floor: float | None = None,
        reads_inline: bool = False,
        writer: WriteBehind | None = None,
    ) -> None:
        """`floor`: with verifiers, the cosine candidates are searched down to instead of the
        similarity threshold (None: the threshold, as without verifiers).

        `reads_inline`: the store is read on the event loop instead of in a worker thread:
        the exact read always, a semantic search (which reads its candidates) when its
        scope's searches are cheap (`SearchPlacement`). For a local SQLite store only
        (`app.py`): its read is two primary-key lookups (tens of microseconds with the pages
        cached, one disk read per b-tree level without), while the hop to a thread and back
        cost ~0.25 ms of an exact hit's p50 (1.78 against 2.02 ms, interleaved runs beside a
        1.19 ms HTTP floor). A store across the network (Redis) is always read in a thread:
        a slow or unreachable server must never hold the loop.

        `writer`: entries are stored after their answer (`cache/write_behind.py`); None:
        before it, in a worker thread (a fleet's shared store)."""
        self.cache = cache
        self.batcher = batcher
        self.learner = learner
        self.embed_timeout_s = embed_timeout_s
        self.default_ttl_s = default_ttl_s
        self.verifiers = tuple(verifiers)
        self.floor = floor if self.verifiers else None
        self.reads_inline = reads_inline
        self.writer = writer
        self.placement = SearchPlacement()
        self.lookups = 0
        """Lookups in flight (`SearchPlacement`: one alone may search inline longer)."""
        self._journal_failing = False
        self.base_threshold = cache.accept_config.threshold if cache is not None else 1.0
        self.store_unavailable = 0
        """Lookups and stores that found the store unreachable (and failed open)."""

    @property
    def ready(self) -> bool:
        return self.cache.ready

    async def lookup(
        self,
        keys: RequestKeys,
        threshold: float | None,
        stages: dict[str, float],
        *,
        meanwhile: Callable[[], object] | None = None,
    ) -> Found:
        """`meanwhile`: what a miss will need, done while the prompt is embedded (see
        `ModelBatcher.run`); never for an exact hit, which is answered before any embedding."""
        self.lookups += 1
        try:
            return await self._lookup(keys, threshold, stages, meanwhile)
        finally:
            self.lookups -= 1

    async def _lookup(
        self,
        keys: RequestKeys,
        threshold: float | None,
        stages: dict[str, float],
        meanwhile: Callable[[], object] | None,
    ) -> Found:
        found = Found()
        cache = self.cache
        with StageTimer(stages, "exact"):
            found.hit = await self.exact(keys)
        if found.hit is not None:
            return found
        if not (keys.semantic_ok and cache.ready):
            return found
        try:
            with StageTimer(stages, "embed"):
                found.vector = await self.batcher.embed(
                    keys.prompt, self.embed_timeout_s, meanwhile=meanwhile
                )
        except TimeoutError as e:
            # Fail open: a slow embedder must cost a cache hit, never an answer.
            found.embed_timeout = True
            if not isinstance(e, ModelBusy):  # shedding is counted, not logged per request
                log.warning("embedding missed its deadline", extra={"scope": keys.scope[:12]})
            return found
        threshold = self.search_threshold(threshold, self.learner.threshold(keys.tenant))
        try:
            with StageTimer(stages, "search"):
                args = (keys.scope, found.vector, keys.prompt, threshold, bool(self.verifiers))
                # Inline only with nothing pending: a flush would hold the loop on a store.
                inline = self.reads_inline and self.placement.inline(
                    keys.scope, alone=self.lookups == 1
                )
                if inline and self._pending_writes() is None:
                    searched = self._search(*args)
                else:
                    searched = await asyncio.to_thread(self._search, *args)
        except StoreUnavailable:
            self.store_unavailable += 1
            return found
        # Report the guards apart from the index scan they ran inside.
        stages["verify"] = searched.verify_ms
        stages["search"] -= searched.verify_ms
        if searched.entry is not None and self.verifiers:
            with StageTimer(stages, "verify"):
                chosen = await choose(keys.prompt, searched.survivors, self.verifiers)
            if chosen.candidate is None:
                searched = Lookup(best_rejected=chosen.best_rejected, reason=chosen.reason)
            else:
                c = chosen.candidate
                searched = Lookup(c.entry, c.similarity, "semantic", chosen.best_rejected, "ok")
        if searched.entry is not None and not await self._servable(searched.entry):
            searched = Lookup(best_rejected=searched.best_rejected, reason="unservable")
        found.searched = searched
        found.hit = searched if searched.entry is not None else None
        return found

    async def exact(self, keys: RequestKeys) -> Lookup | None:
        """The entry stored under exactly this request, if it may be served."""
        # An entry answered a moment ago and not yet stored is the newest under its key.
        writer = self.writer
        entry = writer.pending(keys.exact_key) if writer is not None else None
        if entry is None or entry.expired(self.cache.clock.now()):
            try:
                if self.reads_inline:
                    entry = self.cache.get_exact(keys.exact_key)
                else:
                    entry = await asyncio.to_thread(self.cache.get_exact, keys.exact_key)
            except StoreUnavailable:
                self.store_unavailable += 1
                return None  # fail open: the request goes upstream
        if entry is not None and await self._servable(entry):
            return Lookup(entry, 1.0, "exact", reason="ok")
        return None

    def _search(
        self,
        scope: str,
        vector: Vector,
        prompt: str,
        threshold: float | None,
        all_survivors: bool,
    ) -> Lookup:
        # An entry answered a moment ago is stored before the index is read, so a paraphrase
        # right behind its miss can hit it (in a thread: inline searches wait for none).
        if (writer := self._pending_writes()) is not None:
            writer.flush()
        started = time.perf_counter()
        found = self.cache.search(scope, vector, prompt, threshold, all_survivors=all_survivors)
        self.placement.took(scope, time.perf_counter() - started)
        return found

    def _pending_writes(self) -> WriteBehind | None:
        """The writer, when it has entries to store."""
        writer = self.writer
        return writer if writer is not None and writer.busy else None

    async def settle(self) -> None:
        """Store what is pending: called before a route reads or changes stored entries
        (the cache API, feedback, stats), so it sees every answered miss, and so an
        invalidation is never followed by the store of an entry it should have removed."""
        if (writer := self._pending_writes()) is not None:
            await asyncio.to_thread(writer.flush)

    def search_threshold(self, requested: float | None, learned: float) -> float | None:
        """The cosine a candidate must reach in the search (None: the cache's own).

        Without a verifier this is the acceptance threshold: the operator's (or a stricter
        one the request asked for), raised to what feedback taught this namespace.

        With a verifier the cosine stops deciding and only bounds what the model is shown:
        the floor replaces the operator's similarity threshold, which was a cosine-only
        policy. Two cosine bounds still apply on top, because each states something the
        verifier does not know:
        - a per-request threshold raised above the operator's similarity threshold is the
          caller asking for near-identical matches only, so it holds whatever the verifier
          says. One at or below it (a client sending the default on every request, or a
          looser one where min_threshold allows it) asks for nothing the floor and verifier
          do not already give, so it does not undo the verifier's paraphrase hits;
        - a learned threshold is evidence that this namespace was served wrong answers at
          that similarity (with a verifier on, the learner's base is the floor, so what it
          learns are cosines the verifier let through wrongly), so it holds too.
        Hence max(floor, raised request, learned). The learner never goes below its base,
        so a namespace without reports searches from the floor."""
        if self.floor is None:
            # Feedback may have taught this namespace a stricter threshold than asked for.
            if learned > (requested or self.base_threshold):
                return learned
            return requested
        raised = requested if requested and requested > self.base_threshold else self.floor
        return max(self.floor, raised, learned)

    async def _servable(self, entry: Entry) -> bool:
        """An entry that cannot be served (written before the store refused such answers, or
        by another writer) is dropped and costs a hit, never a 500 on every lookup."""
        if servable(entry):
            return True
        log.warning("unservable entry dropped", extra={"entry": entry.id})
        await asyncio.to_thread(self.cache.delete, entry.id)
        return False

    async def store(
        self,
        keys: RequestKeys,
        response: dict[str, Any],
        *,
        api: str,
        ttl_s: float | None,
        usage: Usage,
        vector: Vector | None = None,
        embed: bool = True,
    ) -> Entry | None:
        """Store an answer (store before index); the stored entry, or None if the store
        failed: the caller still has its answer, a failure costs a future hit only.
        `embed=False` (the lookup's own embedding missed its deadline: the model is
        overloaded) stores it for exact matches only instead of queueing more model work."""
        entry = self._entry(keys, response, api=api, ttl_s=ttl_s, usage=usage, vector=vector)
        return None if entry is None else await self._write(keys, entry, embed)

    def _entry(
        self,
        keys: RequestKeys,
        response: dict[str, Any],
        *,
        api: str,
        ttl_s: float | None,
        usage: Usage,
        vector: Vector | None = None,
    ) -> Entry | None:
        """The entry to store for an answer, its vector still to make if None; None if it
        may not be stored."""
        entry = self.cache.new_entry(
            scope=keys.scope,
            exact_key=keys.exact_key,
            namespace=keys.tenant,
            model=keys.model,
            prompt=keys.prompt,
            embedding=vector if keys.semantic_ok else None,
            response=response,
            ttl_s=ttl_s or self.default_ttl_s,
            prompt_tokens=usage.prompt,
            completion_tokens=usage.completion,
            cached_tokens=usage.repeat().cached,
            meta={"api": api},
        )
        if not servable(entry):
            # E.g. an upstream's NaN: it would be dropped at its first lookup anyway.
            log.warning("unservable answer not stored", extra={"entry": entry.id})
            return None
        return entry

    async def _write(self, keys: RequestKeys, entry: Entry, embed: bool) -> Entry | None:
        if entry.embedding is None and keys.semantic_ok and embed:
            # No lookup embedding (no-cache, the lookup API, or the lookup timed out): embed
            # now, under the lookup's own deadline rather than a long one (the answer waits
            # on this write): a backlogged embedder costs the entry its semantic matches (it
            # is stored for exact ones), not seconds.
            with contextlib.suppress(TimeoutError):
                entry.embedding = await self.batcher.embed(keys.prompt, self.embed_timeout_s)
        if self.writer is not None:
            try:
                self.writer.submit(entry)
            except OSError:
                # E.g. a full disk: stored before the answer instead, as a fleet stores.
                if not self._journal_failing:
                    log.exception("entry journal write failed", extra={"entry": entry.id})
                self._journal_failing = True
            else:
                self._journal_failing = False
                return entry
        try:
            await asyncio.to_thread(self.cache.put, entry)
        except StoreUnavailable:
            self.store_unavailable += 1  # counted, not logged per request: it is one outage
            return None
        except Exception:
            log.exception("store failed", extra={"entry": entry.id})
            return None
        return entry
