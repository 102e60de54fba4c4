"""The index snapshot of one cache, restored at start and saved now and then.

Restoring loads a snapshot (`index_snapshot.load_state`) in bulk, then reconciles it with
the store's list of entry ids (one query, no entry read): ids the store no longer holds and
expired ones are left out, and only the entries the snapshot lacks are read and indexed.
An IVF scope goes in whole, its lists relabelled to the index's rows; one the index refuses
is read from the store instead. A snapshot that cannot be used is logged and ignored, and the
caller rebuilds the index from the store.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from cache_service.backends.faiss_scope import IvfExport
from cache_service.backends.index_snapshot import (
    MANIFEST,
    IndexState,
    Saved,
    ScopeExport,
    SnapshotError,
    load_state,
    save_state,
)
from cache_service.backends.ivf_build import RECALL_FLOOR
from cache_service.heap import give_back

if TYPE_CHECKING:
    from cache_service.cache.semantic import EntryIds, SemanticCache

log = logging.getLogger("cache_service")

SNAPSHOT_DIR = "index-snapshot"
"""Under the data dir."""
SNAPSHOT_INTERVAL_S = 300.0
"""How often a running sidecar saves the snapshot, when the index changed since the last."""
LOAD_CHUNK = 65536
"""Rows of a snapshot's vectors handed to the index per add_many."""


class Restored(NamedTuple):
    from_snapshot: int
    """Entries indexed (or tracked) from the snapshot."""
    read_from_store: int
    """Entries the snapshot lacked, read from the store and indexed."""
    gone: int
    """Snapshot entries the store no longer holds."""
    expired: int
    """Snapshot entries (or entries read) that had expired; deleted from the store."""
    seconds: float


def _chunks(start: int, count: int) -> Iterator[tuple[int, int]]:
    for a in range(start, start + count, LOAD_CHUNK):
        yield a, min(a + LOAD_CHUNK, start + count)


def restore_state(
    cache: SemanticCache, state: IndexState, store_ids: set[str], index: ScopeExport
) -> Restored:
    """Load `state` into `cache` (index and tracking), keeping only what the store still
    holds and what has not expired, then read and index the entries the snapshot lacks;
    marks the cache ready. Expired entries found on the way are deleted from the store
    after that (as a rebuild does)."""
    started = time.perf_counter()
    return _ready(cache, _load(cache, state, store_ids, index), started)


class _Loaded(NamedTuple):
    from_snapshot: int
    read_from_store: int
    gone: int
    expired: list[str]


def _ready(cache: SemanticCache, loaded: _Loaded, started: float) -> Restored:
    # Before ready: the loading's lists, the store's ids, the snapshot's arrays and blobs (freed
    # by now) were ~140-270 B an entry of free heap, which glibc would otherwise keep resident.
    give_back()
    cache.ready = True
    for entry_id in loaded.expired:
        cache.store.delete(entry_id)
    n, read, gone, expired = loaded
    return Restored(n, read, gone, len(expired), time.perf_counter() - started)


def _load(
    cache: SemanticCache, state: IndexState, store_ids: set[str], index: ScopeExport
) -> _Loaded:
    now = cache.clock.now()
    ids = [raw.decode() for raw in state.ids.tolist()]
    expires_all: list[float] = state.expires.tolist()
    scope_of: list[int] = state.scope_of.tolist()
    gone = 0
    expired: list[str] = []
    keep = [False] * len(ids)
    unread: set[str] = set()  # ids left for the store to give
    for row, entry_id in enumerate(ids):
        if entry_id not in store_ids:
            gone += 1
        elif now >= expires_all[row]:  # False for NaN: no expiry
            expired.append(entry_id)
        else:
            keep[row] = True

    expiry: list[float | None] = [None if math.isnan(e) else e for e in expires_all]
    loaded = 0

    for scope_n, start, count in state.blocks:
        scope = state.scopes[scope_n]
        for a, b in _chunks(start, count):
            rows = [r for r in range(a, b) if keep[r]]
            if not rows:
                continue
            block = state.vectors[a:b]
            vectors = np.asarray(block if len(rows) == b - a else block[[r - a for r in rows]])
            cache.track_many(scope, [ids[r] for r in rows], vectors, [expiry[r] for r in rows])
            loaded += len(rows)
    nvec = len(state.vectors)
    labels: list[int] = state.labels.tolist()
    for scope_n, path, fast_path, meta in state.ivf:
        rows = [r for r in range(nvec, len(ids)) if scope_of[r] == scope_n and labels[r] >= 0]
        kept = [r for r in rows if keep[r]]
        try:
            index.import_ivf(
                state.scopes[scope_n],
                IvfExport(
                    blob=path,  # read by FAISS into the index, not copied first
                    fast_blob=fast_path,
                    labels=np.array([labels[r] for r in kept], dtype=np.int64),
                    ids=[ids[r] for r in kept],
                    nlist=int(meta["nlist"]),
                    nprobe=int(meta["nprobe"]),
                    recall=None if meta["recall"] is None else float(meta["recall"]),
                    trained_at=int(meta["trained_at"]),
                    floor=float(meta.get("floor", RECALL_FLOOR)),  # older: measured to ~0.7
                ),
            )
        except ValueError as exc:
            # A blob that is not what it says: the scope's entries are read from the store
            # instead, and built again.
            log.warning("IVF scope of the snapshot not restored", extra={"reason": str(exc)})
            for r in kept:
                keep[r] = False
            unread.update(ids[r] for r in kept)
    bare: dict[int, list[int]] = {}
    for row in range(nvec, len(ids)):
        if keep[row]:
            bare.setdefault(scope_of[row], []).append(row)
    for scope_n, rows in bare.items():
        cache.track_many(
            state.scopes[scope_n], [ids[r] for r in rows], None, [expiry[r] for r in rows]
        )
        loaded += len(rows)
    known = set(ids) - unread
    missing = [entry_id for entry_id in store_ids if entry_id not in known]
    entries = (cache.store.get(entry_id) for entry_id in missing)
    read, expired_read = cache.load_entries(e for e in entries if e is not None)
    return _Loaded(loaded, read, gone, expired + expired_read)


class IndexSnapshots:
    """The snapshot of one cache's index in one directory: restore at start, save now and
    then and at shutdown. Saves are serialised (a periodic one may still be writing when
    shutdown asks for the last)."""

    def __init__(
        self,
        directory: Path,
        cache: SemanticCache,
        index: ScopeExport,
        store: EntryIds,
        *,
        dim: int,
        model: str | None = None,
    ) -> None:
        self.directory = directory
        self.cache = cache
        self.index = index
        self.store = store
        self.dim = dim
        self.model = model
        self._saving = threading.Lock()
        self._saved_at: tuple[int, int] | None = None
        """cache.changes and index.rebuilds when the snapshot on disk was taken (None:
        unknown or stale)."""

    def restore(self) -> Restored | None:
        """Load the snapshot and reconcile it with the store; None (having touched
        nothing) when there is no usable snapshot, so the caller rebuilds instead."""
        try:
            state = load_state(self.directory, dim=self.dim)
        except SnapshotError as exc:
            if (self.directory / MANIFEST).exists():
                log.warning("index snapshot ignored; rebuilding", extra={"reason": str(exc)})
            return None
        started = time.perf_counter()
        loaded = _load(self.cache, state, set(self.store.entry_ids()), self.index)
        del state  # the store's ids went with _load's frame: both freed before the trim
        restored = _ready(self.cache, loaded, started)
        if not (restored.read_from_store or restored.gone or restored.expired):
            self._saved_at = self._version()
        return restored

    def _version(self) -> tuple[int, int]:
        return self.cache.changes, self.index.rebuilds

    def changed(self) -> bool:
        return self._saved_at != self._version()

    def save(self) -> Saved | None:
        """Write a snapshot unless the cache is not ready yet (a partial index) or nothing
        changed since the last one; returns what was written, or None."""
        with self._saving:
            if not self.cache.ready or not self.changed():
                return None
            version = self._version()
            saved = save_state(
                self.directory,
                self.cache.tracked_by_scope(),
                self.index,
                dim=self.dim,
                created=self.cache.clock.now(),
                model=self.model,
            )
            self._saved_at = version
            return saved
