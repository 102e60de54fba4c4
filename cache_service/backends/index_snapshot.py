"""A persisted snapshot of the vector index, checked against the store at start.

The store stays the truth and the index stays derived from it: the snapshot only spares a
restart from reading (and unpickling) every entry. At start it is loaded in bulk, then
reconciled with the store's list of entry ids (one query, no entry read): ids the store no
longer holds and expired ones are left out, and only the entries the snapshot lacks are
read and indexed. A missing, corrupt, truncated or mismatched snapshot is logged and
ignored: the index is rebuilt from the store as before.

Layout, under ``data_dir/index-snapshot/``: ``manifest.json`` names one generation of
five ``.npy`` files, plus one file per IVF scope, and carries each one's size and CRC-32::

    <gen>-ids.npy       tracked entry ids, utf-8, fixed width ("S<n>")
    <gen>-scopes.npy    int32, each row's scope (an index into the manifest's "scopes")
    <gen>-expires.npy   float64, each row's expiry (NaN: none)
    <gen>-vectors.npy   float32 (m, dim): the vector of rows 0..m-1, grouped by scope as
                        the manifest's "blocks" [scope, start, count] say; rows m.. have none
    <gen>-labels.npy    int64, each row's label in its scope's saved IVF index (-1: none)
    <gen>-ivf<n>.faiss  scope n's IVF index, serialised whole (trained lists, 8-bit codes):
                        a restart installs it instead of training one again, minutes at a
                        million vectors; the manifest's "ivf" lists them with what each
                        build chose and measured
    <gen>-fast<n>.faiss  its fast-scan codes (fast_scan), where it has them

The rows of an IVF scope carry no float vector (the index holds its codes): they are among
rows m.., with their labels.

A save writes a new generation's files (fsync'd), then the manifest to a temporary file,
fsync, rename (the commit point), fsync of the directory; only then are other
generations' files removed. A crash mid-save leaves the previous manifest and its files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from cache_service.backends.faiss_scope import IvfExport
from cache_service.backends.ivf_build import RECALL_FLOOR
from cache_service.backends.snapshot_files import (
    checked,
    fsync_dir,
    write_array_file,
    write_bytes_file,
)
from cache_service.heap import give_back
from cache_service.protocols import Vector

if TYPE_CHECKING:
    from cache_service.cache.semantic import EntryIds, SemanticCache

log = logging.getLogger("cache_service")

FORMAT = 2
MANIFEST = "manifest.json"
SNAPSHOT_INTERVAL_S = 300.0
"""How often a running sidecar saves the snapshot, when the index changed since the last."""
LOAD_CHUNK = 65536
"""Rows of a snapshot's vectors handed to the index per add_many."""
_FILES = ("ids", "scopes", "expires", "vectors", "labels")


class SnapshotError(Exception):
    """The snapshot cannot be used (missing, corrupt, truncated, another format or dim)."""


class ScopeExport(Protocol):
    """An index that can hand over a scope's ids and vectors, and an IVF scope whole, and
    take the latter back (FaissIndex)."""

    def export_scope(self, scope: str) -> tuple[list[str], Vector]: ...

    def export_ivf(self, scope: str) -> IvfExport | None: ...

    def import_ivf(self, scope: str, saved: IvfExport) -> None: ...

    @property
    def rebuilds(self) -> int:
        """Counts scopes promoted, retrained or demoted: a snapshot taken before one of
        those would restore the old kind (and train again)."""
        ...


@dataclass(frozen=True, slots=True)
class IndexState:
    """A loaded snapshot: tracked rows, the first `len(vectors)` of which have a vector."""

    dim: int
    created: float
    scopes: list[str]
    blocks: list[tuple[int, int, int]]
    ids: np.ndarray[Any, Any]
    scope_of: np.ndarray[Any, Any]
    expires: np.ndarray[Any, Any]
    vectors: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any]
    ivf: list[tuple[int, Path, Path | None, dict[str, Any]]]
    """Per saved IVF scope: its scope number, its file, what its build chose and measured."""


class Saved(NamedTuple):
    entries: int
    vectors: int
    bytes: int
    seconds: float


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


# --- writing


def save_state(
    directory: Path,
    tracked: dict[str, dict[str, float | None]],
    index: ScopeExport,
    *,
    dim: int,
    created: float,
    model: str | None = None,
) -> Saved:
    """Write a snapshot of `tracked` (scope -> id -> expires) and the vectors `index`
    holds for them. Ids the index holds but `tracked` does not are left out (a concurrent
    store, tracked after the copy: the store has it, so the next load reads it); tracked
    ids the index has no vector for are saved without one (entries without embedding).
    `tracked` is a copy this consumes: it is emptied as it is written."""
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    scopes = sorted(tracked)
    vec_ids: list[str] = []
    vec_scope: list[int] = []
    vec_expires: list[float | None] = []
    vec_blocks: list[np.ndarray[Any, Any]] = []
    blocks: list[tuple[int, int, int]] = []
    bare_ids: list[str] = []
    bare_scope: list[int] = []
    bare_expires: list[float | None] = []
    bare_labels: list[int] = []
    ivfs: list[tuple[int, IvfExport]] = []
    for n, scope in enumerate(scopes):
        wanted = tracked.pop(scope)
        ivf = index.export_ivf(scope)
        if ivf is not None:
            # Its rows go without float vectors: ids the index holds that `tracked` lacks
            # are left out here and removed from the index at restore.
            ivfs.append((n, ivf))
            for label, entry_id in zip(ivf.labels.tolist(), ivf.ids, strict=True):
                if entry_id in wanted:
                    bare_ids.append(entry_id)
                    bare_scope.append(n)
                    bare_expires.append(wanted.pop(entry_id))
                    bare_labels.append(label)
            bare_ids.extend(wanted)
            bare_scope.extend([n] * len(wanted))
            bare_expires.extend(wanted.values())
            bare_labels.extend([-1] * len(wanted))
            continue
        ids, vectors = index.export_scope(scope)
        keep = [row for row, entry_id in enumerate(ids) if entry_id in wanted]
        if len(keep) < len(ids):
            vectors = vectors[keep]
            ids = [ids[row] for row in keep]
        if ids:
            blocks.append((n, len(vec_ids), len(ids)))
            vec_blocks.append(vectors)
            vec_ids.extend(ids)
            vec_scope.extend([n] * len(ids))
            vec_expires.extend(wanted.pop(entry_id) for entry_id in ids)
        bare_ids.extend(wanted)
        bare_scope.extend([n] * len(wanted))
        bare_expires.extend(wanted.values())
        bare_labels.extend([-1] * len(wanted))
    all_ids = [i.encode() for i in (*vec_ids, *bare_ids)]
    width = max((len(i) for i in all_ids), default=1)
    expires = np.array(
        [math.nan if e is None else e for e in (*vec_expires, *bare_expires)], dtype=np.float64
    )
    gen = uuid.uuid4().hex[:16]
    files = {
        "ids": write_array_file(
            directory / f"{gen}-ids.npy", [np.array(all_ids, dtype=f"S{width}")], f"S{width}", 0
        ),
        "scopes": write_array_file(
            directory / f"{gen}-scopes.npy",
            [np.array([*vec_scope, *bare_scope], dtype=np.int32)],
            "<i4",
            0,
        ),
        "expires": write_array_file(directory / f"{gen}-expires.npy", [expires], "<f8", 0),
        "vectors": write_array_file(directory / f"{gen}-vectors.npy", vec_blocks, "<f4", dim),
        "labels": write_array_file(
            directory / f"{gen}-labels.npy",
            [np.full(len(vec_ids), -1, np.int64), np.array(bare_labels, dtype=np.int64)],
            "<i8",
            0,
        ),
    }
    saved_ivf: list[dict[str, Any]] = [
        {
            "scope": n,
            "file": write_bytes_file(directory / f"{gen}-ivf{n}.faiss", ivf.blob),
            "fast": None
            if ivf.fast_blob is None
            else write_bytes_file(directory / f"{gen}-fast{n}.faiss", ivf.fast_blob),
            "nlist": ivf.nlist,
            "nprobe": ivf.nprobe,
            "recall": ivf.recall,
            "trained_at": ivf.trained_at,
            "floor": ivf.floor,
        }
        for n, ivf in ivfs
    ]
    manifest = {
        "format": FORMAT,
        "dim": dim,
        "generation": gen,
        "created": created,
        "count": len(all_ids),
        "vectors": len(vec_ids),
        "model": model,
        "scopes": scopes,
        "blocks": blocks,
        "files": files,
        "ivf": saved_ivf,
    }
    tmp = directory / f"{MANIFEST}.{gen}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)
    fsync_dir(directory)
    # Committed: the previous generation (and any crashed save's leftovers) can go.
    for path in directory.iterdir():
        if path.name != MANIFEST and not path.name.startswith(f"{gen}-"):
            with contextlib.suppress(OSError):
                path.unlink()
    ivf_files = [f for i in saved_ivf for f in (i["file"], i["fast"]) if f is not None]
    size = sum(int(f["bytes"]) for f in (*files.values(), *ivf_files))
    return Saved(len(all_ids), len(vec_ids), size, time.perf_counter() - started)


# --- reading


def load_state(directory: Path, *, dim: int) -> IndexState:
    """Read and check a snapshot; raises SnapshotError unless every file is there, whole,
    of the right size and CRC, and the format and dim are this build's."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SnapshotError("no snapshot") from exc
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"unreadable manifest: {exc}") from exc
    try:
        if manifest["format"] != FORMAT:
            raise SnapshotError(f"format {manifest['format']}, this build reads {FORMAT}")
        if manifest["dim"] != dim:
            raise SnapshotError(f"dim {manifest['dim']}, the embedder's is {dim}")
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name in _FILES:
            path = checked(directory, manifest["files"][name], name)
            arrays[name] = np.load(path, mmap_mode="r" if name == "vectors" else None)
        ivf = [
            (
                int(i["scope"]),
                checked(directory, i["file"], f"ivf{i['scope']}"),
                # Absent from snapshots saved before fast-scan codes: rebuilt with them.
                None if i.get("fast") is None else checked(directory, i["fast"], "fast"),
                i,
            )
            for i in manifest["ivf"]
        ]
        count, nvec = int(manifest["count"]), int(manifest["vectors"])
        ids, scope_of, expires, vectors, labels = (arrays[n] for n in _FILES)
        scopes = [str(s) for s in manifest["scopes"]]
        blocks = [(int(s), int(a), int(c)) for s, a, c in manifest["blocks"]]
        if (
            ids.shape != (count,)
            or ids.dtype.kind != "S"
            or scope_of.shape != (count,)
            or expires.shape != (count,)
            or labels.shape != (count,)
            or any(not 0 <= n < len(scopes) for n, _, _, _ in ivf)
            or vectors.shape != (nvec, dim)
            or vectors.dtype != np.float32
            or nvec > count
            or sum(c for _, _, c in blocks) != nvec
            or any(not 0 <= s < len(scopes) for s, _, _ in blocks)
            or (count and not (int(scope_of.min()) >= 0 and int(scope_of.max()) < len(scopes)))
        ):
            raise SnapshotError("arrays disagree with the manifest")
        return IndexState(
            dim=dim,
            created=float(manifest["created"]),
            scopes=scopes,
            blocks=blocks,
            ids=ids,
            scope_of=scope_of,
            expires=expires,
            vectors=vectors,
            labels=labels,
            ivf=ivf,
        )
    except SnapshotError:
        raise
    except ValueError as exc:
        raise SnapshotError(str(exc)) from exc
    except (OSError, KeyError, TypeError, IndexError) as exc:
        raise SnapshotError(f"unreadable snapshot: {exc!r}") from exc


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

    # IVF scopes first: they keep the labels they were saved with, and labels are one space
    # for every scope, so the flat scopes' rows must come after.
    nvec = len(state.vectors)
    labels: list[int] = state.labels.tolist()
    for scope_n, path, fast_path, meta in state.ivf:
        rows = [r for r in range(nvec, len(ids)) if scope_of[r] == scope_n and labels[r] >= 0]
        kept = [r for r in rows if keep[r]]
        try:
            index.import_ivf(
                state.scopes[scope_n],
                IvfExport(
                    blob=np.fromfile(path, dtype=np.uint8),
                    fast_blob=None if fast_path is None else np.fromfile(fast_path, np.uint8),
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
            # A label in two scopes (older builds allowed it) or a blob that is not what it
            # says: the scope's entries are read from the store instead, and built again.
            log.warning("IVF scope of the snapshot not restored", extra={"reason": str(exc)})
            for r in kept:
                keep[r] = False
            unread.update(ids[r] for r in kept)
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
