"""An IVF scope's FAISS indexes on their way to a snapshot and back: serialised in memory or
written to files in FAISS's own format, and checked when read back.

From a file FAISS reads straight into the index, and to one it writes straight from it, so
a snapshot never holds a serialised copy beside the live index (~0.4 GB at a million 8-bit
vectors, each way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from cache_service.backends.faiss_scope import IvfExport, Labels, index_labels, remove_labels

Blob = npt.NDArray[np.uint8] | Path


def dump(index: Any, path: Path | None) -> Blob:
    """The index serialised into memory, or written to `path` (unsynced: the caller's)."""
    if path is None:
        return faiss.serialize_index(index)
    faiss.write_index(index, str(path))
    return path


def _read(blob: Blob) -> Any:
    # Already of its own class (and owning its memory: a downcast of a temporary would
    # point into freed memory).
    return faiss.read_index(str(blob)) if isinstance(blob, Path) else faiss.deserialize_index(blob)


def load(saved: IvfExport, dim: int) -> tuple[Any, Any, Labels]:
    """The saved index and its fast-scan codes (or None), holding exactly `saved.labels`
    (the rest of what they hold is removed), and those labels. ValueError unless they are
    IVF indexes of `dim` that hold every label kept, with one id per label."""
    index = _read(saved.blob)
    # The two kinds build_ivf makes (SWIG's classes do not share IndexIVF as a base).
    kinds = (faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer)
    if not isinstance(index, kinds) or index.d != dim:
        raise ValueError("not an IVF index of this dimension")
    if len(saved.ids) != len(saved.labels):
        raise ValueError("one entry id per label is needed")
    fast = None
    if saved.fast_blob is not None:
        fast = _read(saved.fast_blob)
        if not isinstance(fast, faiss.IndexIVFPQFastScan) or fast.d != dim:
            raise ValueError("not a fast-scan IVF index of this dimension")
    keep = np.ascontiguousarray(saved.labels, dtype=np.int64)
    extra = np.setdiff1d(index_labels(index), keep, assume_unique=True)
    if len(extra):
        remove_labels(index, "ivf", extra, fast)
    for held in (index, fast):
        if held is not None and held.ntotal != len(keep):
            raise ValueError(f"{len(keep)} labels to keep, {held.ntotal} in the index")
    return index, fast, keep
