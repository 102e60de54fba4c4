"""A persisted snapshot of the vector index: its files, written and read.

The store stays the truth and the index stays derived from it: the snapshot only spares a
restart from reading (and unpickling) every entry. `snapshots.py` restores one, checked
against the store, and saves them; a missing, corrupt, truncated or mismatched snapshot
is ignored there, and the index rebuilt from the store as before.

Layout, under ``data_dir/index-snapshot/``: ``manifest.json`` names one generation of
five ``.npy`` files, plus one file per IVF scope, and carries each one's size and CRC-32::

    <gen>-ids.npy       tracked entry ids, utf-8, fixed width ("S<n>")
    <gen>-scopes.npy    int32, each row's scope (an index into the manifest's "scopes")
    <gen>-expires.npy   float64, each row's expiry (NaN: none)
    <gen>-vectors.npy   float16 (m, dim), as flat scopes keep them (float32 from earlier
                        builds, read too): the vector of rows 0..m-1, grouped by scope as
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
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from cache_service.backends.faiss_scope import IvfExport
from cache_service.backends.snapshot_files import (
    StreamedArrayFile,
    checked,
    fsync_dir,
    write_array_file,
    write_bytes_file,
)
from cache_service.protocols import Halves

FORMAT = 2
MANIFEST = "manifest.json"
_FILES = ("ids", "scopes", "expires", "vectors", "labels")


class SnapshotError(Exception):
    """The snapshot cannot be used (missing, corrupt, truncated, another format or dim)."""


class ScopeExport(Protocol):
    """An index that can hand over a scope's ids and vectors, and an IVF scope whole, and
    take the latter back (FaissIndex)."""

    def export_scope(self, scope: str) -> tuple[list[str], Halves]: ...

    def export_ivf(
        self, scope: str, files: tuple[Path, Path] | None = None
    ) -> IvfExport | None: ...

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
    gen = uuid.uuid4().hex[:16]
    scopes = sorted(tracked)
    vec_ids: list[str] = []
    vec_scope: list[int] = []
    vec_expires: list[float | None] = []
    # Float16: what a flat scope keeps (faiss_scope.flat_index), so nothing is lost, and half
    # the bytes; written as each scope is exported, never gathered.
    vectors_file = StreamedArrayFile(
        directory / f"{gen}-vectors.npy", "<f2", dim, sum(len(t) for t in tracked.values())
    )
    blocks: list[tuple[int, int, int]] = []
    bare_ids: list[str] = []
    bare_scope: list[int] = []
    bare_expires: list[float | None] = []
    bare_labels: list[int] = []
    ivfs: list[tuple[int, IvfExport]] = []
    try:
        for n, scope in enumerate(scopes):
            wanted = tracked.pop(scope)
            # Written straight to its files (synced below, with the rest).
            ivf = index.export_ivf(
                scope, (directory / f"{gen}-ivf{n}.faiss", directory / f"{gen}-fast{n}.faiss")
            )
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
                vectors_file.append(vectors)
                vec_ids.extend(ids)
                vec_scope.extend([n] * len(ids))
                vec_expires.extend(wanted.pop(entry_id) for entry_id in ids)
            bare_ids.extend(wanted)
            bare_scope.extend([n] * len(wanted))
            bare_expires.extend(wanted.values())
            bare_labels.extend([-1] * len(wanted))
    except BaseException:
        vectors_file.discard()  # the partial file goes with the next save's leftovers
        raise
    all_ids = [i.encode() for i in (*vec_ids, *bare_ids)]
    width = max((len(i) for i in all_ids), default=1)
    expires = np.array(
        [math.nan if e is None else e for e in (*vec_expires, *bare_expires)], dtype=np.float64
    )
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
        "vectors": vectors_file.close(),
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
            # float32 from builds before flat scopes kept float16
            or vectors.dtype not in (np.float16, np.float32)
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
