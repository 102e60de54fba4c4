"""The cache core: exact lookup, semantic search with acceptance, store, expiry.

Synchronous on purpose: every method is a short burst of SQLite, FAISS and CPU, run by the
async layer in a worker thread. The benchmarks/quality harness drives this same class, so
what is measured there is what serves requests.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from cache_service.cache.capacity import Capacity
from cache_service.cache.guards import AcceptConfig, accept
from cache_service.cache.hot_entries import HOT_ENTRIES, HotEntries
from cache_service.cache.matching import Candidate
from cache_service.cache.tracking import Tracked
from cache_service.protocols import (
    Clock,
    Entry,
    EntryStore,
    Vector,
    VectorIndex,
    Vectors,
    answer_json,
)

REBUILD_CHUNK = 4096
"""Vectors of one scope that rebuild() hands to the index in one add_many."""
REBUILD_HELD = 16_384
"""Vectors (~25 MB) that rebuild() holds at most, over every scope, before it hands each
scope's to the index. A call's fixed cost is ~0.1-0.2 ms (the index's and the tracking's id
tables): flushing every scope per REBUILD_CHUNK read, 200 scopes got ~20 vectors a call and
1M entries 100k calls (a start with no snapshot, measured: ready in 40-55 s, against 25-31 s
with this bound at 16k or 32k)."""

APPROX_MARGIN = 0.01
"""How far under the threshold an index score may be and still have its entry read and
re-scored: 8-bit codes put scores within ~0.003 of the float ones, so 0.01 loses no
candidate, and the extra reads fall on near misses only."""


def rescore(query: Vector, entry: Entry, approximate: float) -> float:
    """The exact cosine of the query and the stored entry's own vector (both unit length),
    or the index's score when the entry kept no vector of the query's shape."""
    stored = entry.embedding
    if stored is None or stored.shape[-1] != query.shape[-1]:
        return approximate
    return float(np.dot(query.reshape(-1), stored.reshape(-1)))


@dataclass(frozen=True, slots=True)
class Lookup:
    entry: Entry | None = None
    similarity: float | None = None
    """Similarity of the served entry (1.0 for an exact match)."""
    match: str | None = None
    """"exact" or "semantic" on a hit."""
    best_rejected: float | None = None
    """Highest similarity among candidates the policy refused: how close a miss came."""
    reason: str = "miss"
    """Why the best candidate was refused (guard name, "below_threshold", "no_candidates")."""
    verify_ms: float = 0.0
    """Time spent in the acceptance guards (part of the search)."""
    survivors: tuple[Candidate, ...] = ()
    """Every candidate the threshold and guards let through, best first, when the search
    was asked for all of them (model verifiers judge them next); else just the hit."""


@runtime_checkable
class BatchMembership(Protocol):
    """A store across a network, which answers membership for many ids per round trip
    (one `in` per tracked entry would take seconds at 100k entries)."""

    def missing(self, entry_ids: Sequence[str]) -> set[str]:
        """The ids among `entry_ids` that the store does not hold."""
        ...


@runtime_checkable
class EntryIds(Protocol):
    """A store that lists every entry id cheaply (one query, no entry read): what lets a
    restart reconcile an index snapshot with the store instead of reading every entry."""

    def entry_ids(self) -> list[str]:
        """Every entry's id, expired ones not yet culled included."""
        ...


class Swept(NamedTuple):
    expired: int
    evicted: int


class SemanticCache:
    def __init__(
        self,
        store: EntryStore,
        index: VectorIndex,
        clock: Clock,
        accept_config: AcceptConfig,
        *,
        search_k: int = 4,
        keep_hot: bool = False,
    ) -> None:
        """`keep_hot`: the latest exact hits are kept in memory (`hot_entries.py`); only
        for a store no other process changes."""
        self.store = store
        self.index = index
        self.clock = clock
        self.accept_config = accept_config
        self.search_k = search_k
        self.ready = False
        self.capacity: Capacity | None = None
        """The store's fill against its size limit, as the sweep last read it (None: the
        store's limit is not this process's to watch)."""
        self._tracked = Tracked()  # every entry, by scope, with its expiry
        self._lock = threading.Lock()
        self._hot = HotEntries(HOT_ENTRIES if keep_hot else 0)
        self.changes = 0
        """Counts changes to the index and tracking: a snapshot is only worth saving when
        it moved since the last one."""

    # --- reads

    def get_exact(self, exact_key: str) -> Entry | None:
        entry = self._hot.get(exact_key)
        if entry is None:
            mark = self._hot.mark()
            entry = self.store.get_by_exact_key(exact_key)
            if entry is None:
                return None
            self._hot.keep(entry, mark)
        return None if entry.expired(self.clock.now()) else entry

    def search(
        self,
        scope: str,
        vector: Vector,
        prompt: str,
        threshold: float | None = None,
        *,
        all_survivors: bool = False,
    ) -> Lookup:
        """The best candidate above the threshold that passes the guards; with
        `all_survivors`, every such candidate (for verifiers that judge them next)."""
        config = self.accept_config
        if threshold is not None and threshold != config.threshold:
            config = dataclasses.replace(config, threshold=threshold)
        hits = self.index.search(scope, vector, self.search_k)
        if not hits:
            return Lookup(reason="no_candidates")
        now = self.clock.now()
        best_rejected: float | None = None
        reason = "below_threshold"
        verify_s = 0.0
        survivors: list[Candidate] = []
        for hit in hits:  # best first
            # An index's score may be approximate (8-bit codes in a large IVF scope, or
            # vectors decoded from them after a demotion or a snapshot) and sit just under
            # the threshold while the true one is above: such a candidate is read and
            # re-scored from its own vector rather than dropped.
            if hit.similarity < config.threshold - APPROX_MARGIN:
                # Candidates come sorted, so nothing after this one can pass either.
                if best_rejected is None:
                    best_rejected = hit.similarity
                break
            mark = self._hot.mark()
            entry = self._hot.get_id(hit.entry_id) or self.store.get(hit.entry_id)
            if entry is None or entry.expired(now) or entry.scope != scope:
                # Evicted or expired under us: the index is only a hint, the store decides.
                self.index.remove(scope, [hit.entry_id])
                continue
            similarity = rescore(vector, entry, hit.similarity)
            if similarity < config.threshold:
                if best_rejected is None:
                    best_rejected = similarity
                continue
            started = time.perf_counter()
            decision = accept(prompt, entry.prompt, similarity, config)
            verify_s += time.perf_counter() - started
            if decision.accepted:
                self._hot.keep(entry, mark)  # a served answer: likely asked for again
                survivors.append(Candidate(entry, similarity))
                if not all_survivors:
                    break
            elif best_rejected is None:
                best_rejected, reason = similarity, decision.reason
        verify_ms = verify_s * 1000
        if not survivors:
            return Lookup(best_rejected=best_rejected, reason=reason, verify_ms=verify_ms)
        first = survivors[0]
        return Lookup(
            first.entry,
            first.similarity,
            "semantic",
            best_rejected,
            "ok",
            verify_ms,
            tuple(survivors),
        )

    # --- writes

    def new_entry(
        self,
        *,
        scope: str,
        exact_key: str,
        namespace: str,
        model: str,
        prompt: str,
        embedding: Vector | None,
        response: dict[str, Any],
        ttl_s: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        now = self.clock.now()
        return Entry(
            id=uuid.uuid4().hex,
            scope=scope,
            exact_key=exact_key,
            namespace=namespace,
            model=model,
            prompt=prompt,
            embedding=embedding,
            body=answer_json(response),
            created=now,
            expires=now + ttl_s,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_tokens=cached_tokens,
            meta=meta or {},
        )

    def put(self, entry: Entry) -> None:
        # Store before index: any id the index returns then either resolves or is dropped.
        replaced = self.store.put(entry)
        if replaced is not None:
            # Same exact key, so same scope: the old answer's vector goes with it.
            self._forget(replaced, entry.scope)
        self._track(entry)

    def _track(self, entry: Entry) -> None:
        if entry.embedding is not None:
            self.index.add(entry.scope, entry.id, entry.embedding)
        with self._lock:
            self._tracked.add(entry.scope, [entry.id], [entry.expires])
            self.changes += 1

    def _forget(self, entry_id: str, scope: str) -> None:
        self._forget_many(scope, [entry_id])

    def _forget_many(self, scope: str, entry_ids: list[str]) -> None:
        self._hot.forget(entry_ids)
        self.index.remove(scope, entry_ids)
        with self._lock:
            self._tracked.remove(scope, entry_ids)
            self.changes += 1

    def delete(self, entry_id: str) -> Entry | None:
        entry = self.store.delete(entry_id)
        if entry is not None:
            self._forget(entry.id, entry.scope)
        return entry

    def delete_where(self, *, namespace: str | None = None, model: str | None = None) -> int:
        return self.delete_matching(
            lambda e: (
                (namespace is None or e.namespace == namespace)
                and (model is None or e.model == model)
            )
        )

    def delete_matching(self, doomed: Callable[[Entry], bool]) -> int:
        """Delete every entry `doomed` picks; returns how many."""
        picked = [e.id for e in self.store.iter_entries() if doomed(e)]
        for entry_id in picked:
            self.delete(entry_id)
        self._hot.forget_where(doomed)  # held in memory, evicted from the store meanwhile
        return len(picked)

    # --- maintenance

    def rebuild(self, *, forget_missing: bool = False) -> int:
        """Load every live entry's vector into the index: the store is the truth, the index
        is derived from it, so a restart (or a crash mid-write) cannot lose an entry.

        Vectors go in with one add_many per REBUILD_CHUNK of a scope, or per scope each
        REBUILD_HELD read, so a large store loads in few index calls while holding at most
        REBUILD_HELD vectors.

        With `forget_missing`, entries tracked before the rebuild that it did not find leave
        the index too: a replica that missed deletions made elsewhere in a shared store
        (its event stream was trimmed) comes back in step. Entries stored meanwhile are
        untouched, being tracked after the snapshot."""
        before: dict[str, tuple[str, float | None]] = {}
        if forget_missing:
            before = self.tracked()
        count, expired = self.load_entries(self.store.iter_entries(), before)
        for entry_id in expired:
            self.store.delete(entry_id)
        for entry_id, (scope, _) in before.items():
            self._forget(entry_id, scope)
        self.ready = True
        return count

    def load_entries(
        self,
        entries: Iterable[Entry],
        before: dict[str, tuple[str, float | None]] | None = None,
    ) -> tuple[int, list[str]]:
        """Index and track every live entry of `entries` (one add_many per REBUILD_CHUNK
        vectors of a scope, or per scope each REBUILD_HELD); returns how many, and the ids of
        the expired ones, which are left for the caller to delete. Ids found are popped from
        `before`."""
        now = self.clock.now()
        count = 0
        expired: list[str] = []
        # scope -> the id, vector and expiry of each entry read but not yet indexed.
        pending: dict[str, list[tuple[str, Vector, float | None]]] = {}
        held = 0
        for entry in entries:
            if entry.expired(now):
                expired.append(entry.id)
                continue
            if before is not None:
                before.pop(entry.id, None)
            count += 1
            if entry.embedding is None:
                self._track(entry)
                continue
            rows = pending.setdefault(entry.scope, [])
            rows.append((entry.id, entry.embedding, entry.expires))
            held += 1
            if len(rows) >= REBUILD_CHUNK:
                self._track_pending({entry.scope: pending.pop(entry.scope)})
                held -= len(rows)
            elif held >= REBUILD_HELD:
                self._track_pending(pending)
                held = 0
        self._track_pending(pending)
        return count, expired

    def track_many(
        self,
        scope: str,
        entry_ids: Sequence[str],
        vectors: Vectors | None,
        expires: Sequence[float | None],
    ) -> None:
        """Index (with one add_many, unless `vectors` is None: entries without embedding)
        and track many entries of one scope known to be in the store: a snapshot's."""
        if vectors is not None and len(entry_ids):
            self.index.add_many(scope, entry_ids, vectors)
        with self._lock:
            self._tracked.add(scope, entry_ids, expires)
            self.changes += 1

    def tracked(self) -> dict[str, tuple[str, float | None]]:
        """A copy of entry id -> (scope, expires) for every tracked entry."""
        with self._lock:
            return self._tracked.copy()

    def tracked_by_scope(self) -> dict[str, dict[str, float | None]]:
        """A copy of scope -> entry id -> expires for every tracked entry."""
        with self._lock:
            return self._tracked.by_scope()

    def apply_remote(
        self,
        adds: Sequence[tuple[str, str, Vector | None, float | None]],
        deletes: Sequence[tuple[str, str]],
    ) -> None:
        """Follow what another replica did to a shared store, without touching the store:
        `deletes`, as (entry id, scope), leave the index and the sweep's tracking first;
        then `adds`, as (entry id, scope, vector or None, expires), join them with one
        add_many per scope. Both are idempotent (an id already indexed keeps its vector),
        so an event applied twice is harmless; an id in both moves to its new vector.
        Adds already expired are skipped: the sweep would only drop them again."""
        for entry_id, scope in deletes:
            self._forget(entry_id, scope)
        now = self.clock.now()
        pending: dict[str, list[tuple[str, Vector, float | None]]] = {}
        for entry_id, scope, vector, expires in adds:
            if expires is not None and now >= expires:
                continue
            if vector is None:
                with self._lock:
                    self._tracked.add(scope, [entry_id], [expires])
                    self.changes += 1
            else:
                pending.setdefault(scope, []).append((entry_id, vector, expires))
        self._track_pending(pending)

    def _track_pending(self, pending: dict[str, list[tuple[str, Vector, float | None]]]) -> None:
        """What _track does, for many entries with embeddings: one index call per scope."""
        for scope, rows in pending.items():
            ids = [entry_id for entry_id, _, _ in rows]
            self.index.add_many(scope, ids, np.stack([vector for _, vector, _ in rows]))
            with self._lock:
                self._tracked.add(scope, ids, [expires for _, _, expires in rows])
                self.changes += 1
        pending.clear()

    def sweep(self) -> Swept:
        """Remove expired entries, and the vectors of entries the store no longer holds
        (evicted by diskcache's size limit)."""
        now = self.clock.now()
        with self._lock:
            dead = self._tracked.expired(now)
            live_count = len(self._tracked) - len(dead)
        # Vectors leave the index in one call per scope: a removal from a flat FAISS index
        # is a pass over the whole scope (~0.3 s at a million vectors), so one call per id
        # would make a sweep after mass expiry or eviction take hours.
        doomed: dict[str, list[str]] = {}
        for entry_id, scope in dead:
            self.store.delete(entry_id)
            doomed.setdefault(scope, []).append(entry_id)
        expired = len(dead)
        evicted = 0
        # Only pay for a full membership check when the store holds fewer entries than we
        # track, i.e. diskcache evicted some under its size limit (or a shared store
        # expired or evicted some on its own clock).
        if len(self.store) < live_count:
            gone_already = set(dead)
            with self._lock:
                live = [pair for pair in self._tracked.pairs() if pair not in gone_already]
            if isinstance(self.store, BatchMembership):
                gone = self.store.missing([entry_id for entry_id, _ in live])
            else:
                gone = {entry_id for entry_id, _ in live if entry_id not in self.store}
            for entry_id, scope in live:
                if entry_id in gone:
                    doomed.setdefault(scope, []).append(entry_id)
                    evicted += 1
        for scope, entry_ids in doomed.items():
            self._forget_many(scope, entry_ids)
        self.store.cull()
        return Swept(expired, evicted)
