"""FAISS vectors, one inner-product index per scope: flat (float16) while small, IVF past a size.

Per-scope indexes make tenant isolation structural (a search cannot see another scope's
vectors, whatever the threshold) and keep each search small. A scope starts as a flat
(exhaustive) index of float16 vectors, which never misses a near duplicate and scores within
5e-4 of float32, ~6e-5 for spread-out vectors (`faiss_scope.flat_index`). Past `ivf_min`
vectors, `maintain()` promotes the scope, off the request path, to an IVF index (inner
product, nlist ≈ 4·sqrt(n)) trained on the scope's own vectors; once it trains on thousands
of vectors it keeps them as 8-bit codes, and its scores are then within ~0.003 of the float
ones (the cache re-scores). Its
nprobe is the smallest that reaches `target_recall` recall@1 against the exact result,
measured on a sample of the scope's own vectors with noise added, down to `recall_floor`,
the lowest cosine a search serves from (`ivf_build.noisy`); the figure is kept and reported
by `stats()`, never assumed, and a scope measured down to a higher floor than the index's (a
snapshot saved under a stricter configuration) is rebuilt. Where that nprobe makes a search
scan thousands of 8-bit codes (vectors spread evenly over the lists), the scope also gets
4-bit fast-scan codes that shortlist candidates for the 8-bit codes to rank
(`fast_scan`), and the nprobe is chosen again through them.

Entry ids and labels map through one `IdTable` for all scopes, each scope a numbered space
in it (a label is its id's row): ~48 B an entry at a million in numpy arrays, where two dicts
per scope held ~230 (the id string, its int label, two slots).

While a scope is being rebuilt, searches keep using its current index and every add and
remove is applied to it as usual and also logged; the log is replayed into the new index
before it is swapped in under the write lock, so nothing written during a build is lost.
An IVF scope that grows to `retrain_factor` times the size it was trained at is retrained;
one that shrinks below `ivf_min // 4` is demoted back to a flat index.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from cache_service.backends import fast_scan, ivf_io
from cache_service.backends.faiss_scope import (
    IvfExport,
    Kind,
    Labels,
    Scope,
    ScopeStats,
    flat_codes,
    flat_index,
    flat_vectors,
    relabel,
    replay,
    summary_of,
)
from cache_service.backends.ivf_build import RECALL_FLOOR, TARGET_RECALL, Built, Shrunk, build_ivf
from cache_service.backends.rwlock import ReadWriteLock
from cache_service.heap import give_back
from cache_service.id_table import IdTable, distinct
from cache_service.protocols import Halves, SearchHit, Vector, Vectors

log = logging.getLogger(__name__)

IVF_MIN = 8_192
"""Vectors at which a scope is promoted to IVF: where a flat probe costs ten IVF ones. In the
sidecar a probe finds the vectors out of cache (the model's pass has just run): a flat scan
of 10k random 384-d vectors took 0.67 ms so, an IVF probe 0.06 ms at recall@1 0.995 down to
cos 0.92 (nprobe 2 of 400); 5k: 0.05 ms, nprobe 1."""

_READ_CHUNK = 16_384
"""Vectors a build reads from the live index per read-lock hold."""

_SWAP_REPLAY_MAX = 4096
"""Logged vectors replayed under the write lock at the swap; a longer log is first drained
outside the lock, so a busy scope's writers are not held for a long replay."""


class FaissIndex:
    """`ivf_min`: vectors at which a scope is promoted to IVF (None: never). Promotion,
    retraining and demotion happen in `maintain()`: with `background=True` (the default) a
    daemon thread this index owns runs it whenever a write leaves a scope due for one, so
    callers need do nothing; with `background=False` the caller runs `maintain()` itself,
    in a worker thread (it blocks for as long as a build takes)."""

    def __init__(
        self,
        dim: int,
        omp_threads: int = 1,
        *,
        ivf_min: int | None = IVF_MIN,
        target_recall: float = TARGET_RECALL,
        recall_floor: float = RECALL_FLOOR,
        retrain_factor: float = 4.0,
        background: bool = True,
        build_threads: int = 1,
        seed: int = 0,
    ) -> None:
        # A single query is too small to split across threads; OpenMP's spin-up costs more
        # than the scan and competes with the embedder for the two cores.
        faiss.omp_set_num_threads(omp_threads)
        self.dim = dim
        self.ivf_min = ivf_min
        self.target_recall = target_recall
        self.recall_floor = recall_floor
        self.retrain_factor = retrain_factor
        self.build_threads = build_threads
        self._seed = seed
        self._scopes: dict[str, Scope] = {}
        self._ids = IdTable()
        self._numbered = 0  # scopes numbered so far
        # FAISS indexes are safe for concurrent searches, not for a search beside an add.
        self._lock = ReadWriteLock()
        # One build at a time (background thread or a caller's maintain()).
        self._maintaining = threading.Lock()
        self._background = background
        self._worker: threading.Thread | None = None
        self._starting = threading.Lock()
        self._wakeup = threading.Event()
        self._closed = False
        self.rebuilds = 0
        """Scopes promoted, retrained or demoted so far (an index snapshot is then stale)."""

    # -------------------------------------------------------------- the VectorIndex protocol

    def add(self, scope: str, entry_id: str, vector: Vector) -> None:
        vec = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dim)
        self.add_many(scope, [entry_id], vec)

    def _rows(self, entry_ids: Sequence[str], vectors: Vectors) -> tuple[list[str], Vectors]:
        """The ids and their vectors as FAISS takes them (float16 rows stay float16: see
        `faiss_scope.add_labels`), or ValueError unless there is one row of `dim` per id."""
        ids = list(entry_ids)
        vecs: Vectors = (
            np.ascontiguousarray(vectors, dtype=np.float16)
            if getattr(vectors, "dtype", None) == np.float16
            else np.ascontiguousarray(vectors, dtype=np.float32)
        )
        if vecs.shape != (len(ids), self.dim):
            raise ValueError(
                f"{len(ids)} entry ids need vectors of shape ({len(ids)}, {self.dim}),"
                f" got {vecs.shape}"
            )
        return ids, vecs

    def add_many(self, scope: str, entry_ids: Sequence[str], vectors: Vectors) -> None:
        ids, vecs = self._rows(entry_ids, vectors)
        if not ids:
            return
        with self._lock.write():
            s = self._scope(scope)
            # Ids already in the scope, or earlier in this batch, are skipped: re-adding
            # (rebuild racing a store) must not duplicate, and the first vector stays.
            labels, filed = self._ids.file(ids, s.no)
            if not filed.any():
                return
            s.apply_add(labels[filed], vecs if filed.all() else vecs[filed])
            due = self._due(s) is not None
        if due:
            self._wake()

    def _scope(self, name: str) -> Scope:
        """The scope, created (and numbered) if new. Under the write lock."""
        s = self._scopes.get(name)
        if s is None:
            self._numbered += 1
            s = self._scopes[name] = Scope(self.dim, self._numbered)
        return s

    def search(self, scope: str, vector: Vector, k: int) -> list[SearchHit]:
        vec = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dim)
        with self._lock.read():
            s = self._scopes.get(scope)
            if s is None or s.index.ntotal == 0:
                return []
            k = min(k, s.index.ntotal)
            if s.kind == "ivf":
                scores, labels = fast_scan.search(s.index, s.fast, vec, k, s.nprobe)
                if labels[0, k - 1] < 0 and s.nprobe < s.nlist:
                    # The probed lists held fewer than k vectors: a search returns
                    # min(k, size) hits, so look in every list (only tiny scopes or huge k).
                    scores, labels = fast_scan.search(s.index, s.fast, vec, k, s.nlist)
            else:
                scores, labels = s.index.search(vec, k)
            found = labels[0] >= 0
            return [
                SearchHit(entry_id, score)
                for entry_id, score in zip(
                    self._ids.keys(labels[0][found]), scores[0][found].tolist(), strict=True
                )
            ]

    def remove(self, scope: str, entry_ids: Iterable[str]) -> None:
        with self._lock.write():
            s = self._scopes.get(scope)
            if s is None:
                return
            rows = self._ids.rows(list(entry_ids), s.no)
            labels = distinct(rows[rows >= 0])
            if not len(labels):
                return
            s.apply_remove(labels)
            self._ids.remove(labels)
            if s.index.ntotal == 0:
                del self._scopes[scope]  # a build of it, if one runs, is dropped at the swap
                return
            due = self._due(s) is not None
        if due:
            self._wake()

    def clear(self) -> None:
        with self._lock.write():
            self._scopes.clear()
            self._ids = IdTable()

    def scopes(self) -> int:
        return len(self._scopes)

    def __len__(self) -> int:
        with self._lock.read():
            return sum(s.index.ntotal for s in self._scopes.values())

    def export_scope(self, scope: str) -> tuple[list[str], Halves]:
        """One scope's entry ids and a copy of their vectors, (n, dim) float16 as a flat
        scope keeps them (an IVF scope's are read back and rounded so), in the same order,
        read in one consistent view: what an index snapshot saves, in float16 too. An
        unknown scope gives no ids and a (0, dim) array. add_many(scope, ids, vectors) puts
        them back.

        The copy's memory is allocated and touched before the read lock is taken (page
        faults cost seconds at a million vectors here), so the lock is held for a memcpy
        and the id lookup only: a writer waiting on it would hold up searches too."""
        with self._lock.read():
            s = self._scopes.get(scope)
            size = 0 if s is None else s.index.ntotal
        while True:
            spare = np.empty((size + size // 64 + 64, self.dim), dtype=np.float16)
            spare.fill(0)
            with self._lock.read(long=True):  # searches go on beside it (rwlock.py)
                s = self._scopes.get(scope)
                if s is None or s.index.ntotal == 0:
                    return [], np.empty((0, self.dim), dtype=np.float16)
                n = s.index.ntotal
                if s.kind == "ivf":
                    # No flat code array to copy: read the vectors back through the IVF's
                    # direct map (slower, but a promoted scope is rare and this is a save).
                    labels = self._ids.in_space(s.no)
                    vectors = s.index.reconstruct_batch(labels).astype(np.float16)
                    return self._ids.keys(labels), vectors
                if n <= len(spare):
                    labels, codes = flat_codes(s.index)
                    spare[:n] = codes
                    return self._ids.keys(labels), spare[:n]
            size = n  # grew past the spare rows meanwhile: allocate again

    def export_ivf(self, scope: str, files: tuple[Path, Path] | None = None) -> IvfExport | None:
        """An IVF scope serialised whole, with the id of each label (None for a flat or
        unknown scope: export_scope() saves those). Under the read lock it is either copied
        into memory or, given `files` (for the index and its fast-scan codes), written to
        them, unsynced, so that a snapshot never holds it twice (~0.4 GB at a million 8-bit
        vectors)."""

        with self._lock.read(long=True):  # searches go on beside it (rwlock.py)
            s = self._scopes.get(scope)
            if s is None or s.kind != "ivf" or s.index.ntotal == 0:
                return None
            labels = self._ids.in_space(s.no)
            main, fast = files or (None, None)
            return IvfExport(
                blob=ivf_io.dump(s.index, main),
                fast_blob=None if s.fast is None else ivf_io.dump(s.fast, fast),
                labels=labels,
                ids=self._ids.keys(labels),
                nlist=s.nlist,
                nprobe=s.nprobe,
                recall=s.recall,
                trained_at=s.trained_at,
                floor=s.floor,
            )

    def import_ivf(self, scope: str, saved: IvfExport) -> None:
        """Install a scope exported by export_ivf, keeping only the labels in
        `saved.labels` (the rest of what the index holds is removed): a restart then
        serves the scope from its trained lists at once. Its ids get rows of this index's
        id table and the lists are relabelled to them, so labels saved by another process
        (or an older build, which drew them sparsely) cost nothing. Raises ValueError when
        the scope exists already or the blob is not an IVF index of this dimension."""
        index, fast, keep = ivf_io.load(saved, self.dim)
        with self._lock.write():
            if scope in self._scopes:
                raise ValueError(f"scope {scope[:12]} is already indexed")
            s = self._scope(scope)
            try:
                rows = self._ids.add(saved.ids, s.no)
            except ValueError:  # an id repeats
                del self._scopes[scope]
                raise
            for held in (index, fast):
                if held is not None:
                    relabel(held, keep, rows)  # ~0.3 s at a million, before any search
            s.index, s.kind, s.fast = index, "ivf", fast
            s.nlist, s.nprobe, s.recall = saved.nlist, saved.nprobe, saved.recall
            s.trained_at, s.floor = saved.trained_at, saved.floor
            due = self._due(s) is not None
        if due:
            self._wake()

    # -------------------------------------------------------------- approximate search

    def summary(self) -> dict[str, Any]:
        """stats() folded for an operator (scope names are tenants' hashes): how many
        scopes of each kind, how many are being built, and the lowest recall@1 measured
        among the approximate ones (None when every scope is exact), down to which cosine."""
        return {**summary_of(self.stats().values()), "recall_floor": self.recall_floor}

    def stats(self) -> dict[str, ScopeStats]:
        """Per scope: kind, size and, for an IVF scope, nlist, nprobe and the recall@1
        measured when it was built."""
        with self._lock.read():
            return {name: s.stats() for name, s in self._scopes.items()}

    def maintain(self) -> int:
        """Promote, retrain or demote every scope due for it; returns how many were rebuilt.
        Blocks for as long as the builds take (seconds to minutes for a large scope), with
        searches and writes going on meanwhile: run it in a worker thread, never on the
        request path."""
        done = 0
        with self._maintaining:
            # Again while something was built: a building scope is never due, so one that
            # grew past the retrain factor during its build (promoted at ivf_min while a
            # restart's rebuild still added) kept that training until the next write, or
            # restart. Bounded, should a scope come out of its build still due.
            for _ in range(3):
                built = sum(self._rebuild_due())
                done += built
                if not built:
                    break
        if done:
            give_back()  # a build's reads and training copy: ~1.5 GB of temporaries at 1M
        return done

    def _rebuild_due(self) -> Iterator[int]:
        with self._lock.read():
            todo = [(n, s, kind) for n, s in self._scopes.items() if (kind := self._due(s))]
        for name, s, kind in todo:
            try:
                yield self._rebuild(name, s, kind)
            except Exception:
                s.hold_until = 2 * max(1, int(s.index.ntotal))
                log.exception("index build failed; the scope keeps its current index")
                with self._lock.write():
                    s.log = None

    def close(self) -> None:
        """Stop the background thread, if one was started (it is a daemon: optional)."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            self._worker.join()

    def _due(self, s: Scope) -> Kind | None:
        n = s.index.ntotal
        if self.ivf_min is None or s.log is not None or n < s.hold_until:
            return None
        if s.kind == "flat":
            return "ivf" if n >= self.ivf_min else None
        if n < self.ivf_min // 4:
            return "flat"
        if n >= self.retrain_factor * s.trained_at:
            return "ivf"
        if fast_scan.lacking(s):  # restored from a snapshot saved before fast-scan codes
            return "ivf"
        return "ivf" if s.floor > self.recall_floor else None

    def _wake(self) -> None:
        if not self._background or self._closed:
            return
        if self._worker is None:
            with self._starting:  # started once, whoever gets here first
                if self._worker is None:
                    self._worker = threading.Thread(
                        target=self._work, name="faiss-maintain", daemon=True
                    )
                    self._worker.start()
        self._wakeup.set()

    def _work(self) -> None:
        # OpenMP's thread count is per thread: this one's builds use build_threads.
        faiss.omp_set_num_threads(self.build_threads)
        while True:
            self._wakeup.wait()
            if self._closed:
                return
            self._wakeup.clear()
            self.maintain()

    def _rebuild(self, name: str, s: Scope, kind: Kind) -> int:
        with self._lock.read():  # no writer runs: the snapshot and the log start at one instant
            if self._scopes.get(name) is not s:
                return 0
            labels = self._ids.in_space(s.no)
            s.log = []
        fast: Any = None
        recall: float | None = None
        if kind == "ivf":
            try:
                new, fast, nlist, nprobe, recall = self._build_ivf(s, labels)
            except Shrunk:
                with self._lock.write():
                    s.log = None  # maintain() decides again on the next call
                return 0
        else:
            new, nlist, nprobe = flat_index(self.dim), 0, 0
            for present, vecs in self._read(s, labels):
                new.add_with_ids(vecs, present)
        trained_at = len(labels)
        while True:
            with self._lock.write():
                if self._scopes.get(name) is not s:  # emptied or cleared meanwhile
                    s.log = None
                    return 0
                assert s.log is not None
                pending, logged = s.log, sum(len(labels) for labels, _ in s.log)
                if logged <= _SWAP_REPLAY_MAX:
                    replay(new, kind, pending, fast)
                    s.index, s.kind, s.fast, s.log = new, kind, fast, None
                    self.rebuilds += 1
                    s.nlist, s.nprobe, s.recall, s.trained_at = nlist, nprobe, recall, trained_at
                    s.floor = self.recall_floor
                    break
                s.log = []
            replay(new, kind, pending, fast)  # a long log: drained outside the lock first
        log.info(
            "scope index rebuilt",
            extra={
                "kind": kind,
                "size": trained_at,
                "nlist": nlist,
                "nprobe": nprobe,
                "recall_at_1": recall,
            },
        )
        return 1

    def _read(self, s: Scope, labels: Labels) -> Iterator[tuple[Labels, Vector]]:
        """The vectors of those of `labels` still in the scope, a chunk at a time, each chunk
        read under the read lock: a build never holds a second copy of a large scope. Labels
        removed since the snapshot are skipped (their removal is in the log anyway); a label
        freed and taken again meanwhile is read with its new vector, and the log's removal
        and add of it, replayed in order, leave that vector in the build too."""
        for start in range(0, len(labels), _READ_CHUNK):
            chunk = labels[start : start + _READ_CHUNK]
            with self._lock.read():
                present = chunk[self._ids.column("space")[chunk] == s.no]
                if not len(present):
                    continue
                if s.kind == "flat":
                    vecs = flat_vectors(s.index, present)
                else:
                    vecs = s.index.reconstruct_batch(present)
            yield present, np.ascontiguousarray(vecs, dtype=np.float32)

    def _build_ivf(self, s: Scope, labels: Labels) -> Built:
        return build_ivf(
            lambda wanted: self._read(s, wanted),
            labels,
            dim=self.dim,
            seed=self._seed,
            target_recall=self.target_recall,
            floor=self.recall_floor,
        )
