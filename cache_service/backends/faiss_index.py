"""FAISS vectors, one exact inner-product index per scope.

Per-scope indexes make tenant isolation structural (a search cannot see another scope's
vectors, whatever the threshold) and keep each search small. Flat (exact) search: a scope
rarely holds more than tens of thousands of prompts, where a flat scan of 384-d vectors is
a few milliseconds and, unlike HNSW, supports removal and never misses a near duplicate.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence

import faiss
import numpy as np

from cache_service.protocols import SearchHit, Vector


class _ReadWriteLock:
    """Many searches at once, or one add/remove. FAISS releases the GIL while it scans, so
    concurrent lookups in one large scope can use both cores instead of queueing; waiting
    writers go first, so a stream of lookups cannot starve the stores behind them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class _Scope:
    __slots__ = ("by_id", "by_label", "index")

    def __init__(self, dim: int) -> None:
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.by_label: dict[int, str] = {}
        self.by_id: dict[str, int] = {}


class FaissIndex:
    def __init__(self, dim: int, omp_threads: int = 1) -> None:
        # A single query is too small to split across threads; OpenMP's spin-up costs more
        # than the scan and competes with the embedder for the two cores.
        faiss.omp_set_num_threads(omp_threads)
        self.dim = dim
        self._scopes: dict[str, _Scope] = {}
        self._next_label = 0
        # FAISS indexes are safe for concurrent searches, not for a search beside an add.
        self._lock = _ReadWriteLock()

    def add(self, scope: str, entry_id: str, vector: Vector) -> None:
        vec = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dim)
        self.add_many(scope, [entry_id], vec)

    def add_many(self, scope: str, entry_ids: Sequence[str], vectors: Vector) -> None:
        ids = list(entry_ids)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.shape != (len(ids), self.dim):
            raise ValueError(
                f"{len(ids)} entry ids need vectors of shape ({len(ids)}, {self.dim}),"
                f" got {vecs.shape}"
            )
        with self._lock.write():
            s = self._scopes.get(scope)
            # Ids already in the scope, or earlier in this batch, are skipped: re-adding
            # (rebuild racing a store) must not duplicate, and the first vector stays.
            known = set() if s is None else s.by_id.keys()
            rows: dict[str, int] = {}
            for row, entry_id in enumerate(ids):
                if entry_id not in known and entry_id not in rows:
                    rows[entry_id] = row
            if not rows:
                return
            if s is None:
                s = self._scopes[scope] = _Scope(self.dim)
            labels = np.arange(self._next_label, self._next_label + len(rows), dtype=np.int64)
            self._next_label += len(rows)
            if len(rows) < len(ids):
                vecs = vecs[list(rows.values())]
            s.index.add_with_ids(vecs, labels)
            for label, entry_id in zip(labels.tolist(), rows, strict=True):
                s.by_label[label] = entry_id
                s.by_id[entry_id] = label

    def search(self, scope: str, vector: Vector, k: int) -> list[SearchHit]:
        vec = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dim)
        with self._lock.read():
            s = self._scopes.get(scope)
            if s is None or s.index.ntotal == 0:
                return []
            scores, labels = s.index.search(vec, min(k, s.index.ntotal))
            return [
                SearchHit(s.by_label[int(label)], float(score))
                for score, label in zip(scores[0], labels[0], strict=True)
                if label >= 0
            ]

    def remove(self, scope: str, entry_ids: Iterable[str]) -> None:
        with self._lock.write():
            s = self._scopes.get(scope)
            if s is None:
                return
            labels = [s.by_id.pop(i) for i in entry_ids if i in s.by_id]
            if labels:
                s.index.remove_ids(np.array(labels, dtype=np.int64))  # type: ignore[arg-type]
                for label in labels:
                    del s.by_label[label]
            if s.index.ntotal == 0:
                del self._scopes[scope]

    def clear(self) -> None:
        with self._lock.write():
            self._scopes.clear()

    def scopes(self) -> int:
        return len(self._scopes)

    def __len__(self) -> int:
        with self._lock.read():
            return sum(s.index.ntotal for s in self._scopes.values())

    def export_scope(self, scope: str) -> tuple[list[str], Vector]:
        """One scope's entry ids and a copy of their vectors, (n, dim) float32 in the same
        order, read in one consistent view: what an index snapshot saves. An unknown scope
        gives no ids and a (0, dim) array. add_many(scope, ids, vectors) puts them back.

        The copy's memory is allocated and touched before the read lock is taken (page
        faults cost seconds at a million vectors here), so the lock is held for a memcpy
        and the id lookup only: a writer waiting on it would hold up searches too."""
        with self._lock.read():
            s = self._scopes.get(scope)
            size = 0 if s is None else s.index.ntotal
        while True:
            spare = np.empty((size + size // 64 + 64, self.dim), dtype=np.float32)
            spare.fill(0)
            with self._lock.read():
                s = self._scopes.get(scope)
                if s is None or s.index.ntotal == 0:
                    return [], np.empty((0, self.dim), dtype=np.float32)
                n = s.index.ntotal
                if n <= len(spare):
                    flat = faiss.downcast_index(s.index.index)
                    codes = faiss.rev_swig_ptr(flat.codes.data(), n * self.dim * 4)  # type: ignore[attr-defined]
                    spare[:n] = codes.view(np.float32).reshape(n, self.dim)
                    labels = faiss.vector_to_array(s.index.id_map)
                    by_label = s.by_label
                    return [by_label[label] for label in labels.tolist()], spare[:n]
            size = n  # grew past the spare rows meanwhile: allocate again

    def import_scope(self, scope: str, entry_ids: Sequence[str], vectors: Vector) -> None:
        """add_many for rows that are new to the scope and unique (a snapshot's): one FAISS
        call and the id maps built in bulk, with no per-id check. Falls back to add_many
        (which skips ids already there) when any id repeats or is already in the scope."""
        ids = list(entry_ids)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.shape != (len(ids), self.dim):
            raise ValueError(
                f"{len(ids)} entry ids need vectors of shape ({len(ids)}, {self.dim}),"
                f" got {vecs.shape}"
            )
        if not ids:
            return
        with self._lock.write():
            s = self._scopes.get(scope)
            fresh = len(set(ids)) == len(ids) and (s is None or s.by_id.keys().isdisjoint(ids))
            if fresh:
                if s is None:
                    s = self._scopes[scope] = _Scope(self.dim)
                labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
                self._next_label += len(ids)
                s.index.add_with_ids(vecs, labels)
                listed = labels.tolist()
                s.by_label.update(zip(listed, ids, strict=True))
                s.by_id.update(zip(ids, listed, strict=True))
                return
        self.add_many(scope, ids, vecs)
