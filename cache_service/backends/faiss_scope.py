"""One scope's FAISS index as FaissIndex keeps it: the index (flat or IVF), its space in
FaissIndex's id table, what an IVF build measured, and the log of writes made
while a rebuild runs (replayed into the new index before the swap)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from cache_service.protocols import Halves, Vector, Vectors

Labels = npt.NDArray[np.int64]
_NO_MAP = 0  # faiss.DirectMap.NoMap (its stubs lack DirectMap)
Kind = Literal["flat", "ivf"]


@dataclass(frozen=True, slots=True)
class ScopeStats:
    """What one scope's index is, as stats() reports it."""

    kind: Kind
    size: int
    nlist: int | None
    nprobe: int | None
    recall_at_1: float | None
    """Measured against the flat result when the IVF was built (None for a flat scope:
    exhaustive by construction)."""
    trained_at: int | None
    """How many vectors the IVF was built from; a retrain happens past retrain_factor × it."""
    fast_scan: bool
    """Whether its searches are shortlisted by fast-scan codes first (fast_scan)."""
    building: bool


def summary_of(scopes: Iterable[ScopeStats]) -> dict[str, Any]:
    """FaissIndex.summary(): scopes of each kind, builds running, the lowest recall@1."""
    listed = list(scopes)
    recalls = [s.recall_at_1 for s in listed if s.recall_at_1 is not None]
    return {
        "flat_scopes": sum(s.kind == "flat" for s in listed),
        "ivf_scopes": sum(s.kind == "ivf" for s in listed),
        "fast_scan_scopes": sum(s.fast_scan for s in listed),
        "building": sum(s.building for s in listed),
        "ivf_min_recall_at_1": min(recalls) if recalls else None,
    }


@dataclass(frozen=True, slots=True)
class IvfExport:
    """One IVF scope as an index snapshot keeps it: the serialised FAISS index (its trained
    lists and codes: restoring it costs a read, not a build), the entry id of each of its
    labels, and what its build chose and measured."""

    blob: npt.NDArray[np.uint8] | Path
    """The index serialised, in memory or in a file (FAISS's own format either way): a
    snapshot writes and reads the file directly, never holding a second copy (~0.4 GB at a
    million 8-bit vectors) in memory."""
    fast_blob: npt.NDArray[np.uint8] | Path | None
    """Its fast-scan codes (fast_scan), likewise; None where it has none."""
    labels: Labels
    ids: list[str]
    nlist: int
    nprobe: int
    recall: float | None
    trained_at: int
    floor: float
    """The cosine down to which its recall was measured (`ivf_build.noisy`)."""


# While a build runs, every write is logged as (labels, vectors) for an add, (labels, None)
# for a remove, to be replayed into the new index before the swap.
LogEntry = tuple[Labels, "Vectors | None"]


def probe(nprobe: int) -> Any:
    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    return params


FLAT_ROUNDING = 2.0**-11
"""float16's unit roundoff: each component a flat scope keeps is within this of itself,
relatively (within 3e-8 absolutely below float16's normal range, 6e-5)."""

FLAT_SCORE_ERROR = 5e-4
"""The most a flat scope's score can be off the float32 cosine of two unit vectors: each
stored component is rounded within FLAT_ROUNDING of itself, so a score moves by at most
FLAT_ROUNDING · Σ|q_i·x_i| ≤ FLAT_ROUNDING ≈ 4.9e-4 (Cauchy-Schwarz). Spread-out vectors
like MiniLM's come within ~6e-5."""


def flat_index(dim: int) -> Any:
    """An exhaustive inner-product index that keeps its vectors as float16.

    Half the memory of float32 (768 B a MiniLM vector, not 1,536): scopes under `ivf_min`
    stay flat for good, so with many tenants, models and system prompts most entries live
    in flat scopes, and float32 alone was past 1 KB an entry. A scan reads half the bytes
    too, and a probe right after the model's pass finds them out of the CPU caches: at 1k
    vectors 78 µs against 132, at 8k 291 against 622 (cold, measured here). Scores are within
    FLAT_SCORE_ERROR of the float ones, far inside the margin the cache re-scores candidates
    within, from each entry's own float32 vector.

    Labels map to positions through `IndexIDMap`'s array only: `IndexIDMap2` adds a hash
    map back (~38 B an entry, measured at a million) for `reconstruct`, which only a
    promotion needs, and `flat_vectors` finds positions from the array instead."""
    return faiss.IndexIDMap(
        faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    )


def flat_codes(index: Any) -> tuple[Labels, Halves]:
    """Views (not copies) of a flat index's labels and vectors, position by position: valid
    until the index next changes."""
    n, dim = index.ntotal, index.d
    if not n:
        return np.empty(0, np.int64), np.empty((0, dim), np.float16)
    labels = faiss.rev_swig_ptr(index.id_map.data(), n)
    # The codes are IEEE float16 (`flat_index`), one row of `dim` a vector.
    codes = faiss.rev_swig_ptr(faiss.downcast_index(index.index).codes.data(), n * dim * 2)  # type: ignore[attr-defined]
    return labels, codes.view(np.float16).reshape(n, dim)


def flat_vectors(index: Any, labels: Labels) -> Vector:
    """The float32 vectors of `labels`, each held by the flat `index`."""
    held, codes = flat_codes(index)
    # Labels are rows of the id table, so a dense array maps them back to positions: one
    # pass over the scope (~6 ms at a million) where a sort would cost ~14 times that.
    at = np.full(int(max(held.max(initial=-1), labels.max(initial=-1))) + 1, -1, np.int64)
    at[held] = np.arange(len(held))
    positions = at[labels]
    if (positions < 0).any():
        raise KeyError("labels not in the index")
    return codes[positions].astype(np.float32)


class Scope:
    __slots__ = (
        "fast",
        "floor",
        "hold_until",
        "index",
        "kind",
        "log",
        "nlist",
        "no",
        "nprobe",
        "recall",
        "trained_at",
    )

    def __init__(self, dim: int, no: int) -> None:
        self.no = no
        """The scope's space in FaissIndex's id table: its labels are that space's rows."""
        self.index: Any = flat_index(dim)
        self.kind: Kind = "flat"
        # A large IVF scope's fast-scan first stage (fast_scan), over the same labels.
        self.fast: Any = None
        self.nlist = 0
        self.nprobe = 0
        self.recall: float | None = None
        self.floor = 1.0  # an IVF's: the cosine down to which its recall was measured
        self.trained_at = 0
        self.log: list[LogEntry] | None = None
        # After a failed build: no retry until the scope reaches this size, rather than on
        # every write.
        self.hold_until = 0

    def stats(self) -> ScopeStats:
        ivf = self.kind == "ivf"
        return ScopeStats(
            kind=self.kind,
            size=int(self.index.ntotal),
            nlist=self.nlist if ivf else None,
            nprobe=self.nprobe if ivf else None,
            recall_at_1=self.recall if ivf else None,
            trained_at=self.trained_at if ivf else None,
            fast_scan=self.fast is not None,
            building=self.log is not None,
        )

    def apply_add(self, labels: Labels, vecs: Vectors) -> None:
        add_labels(self.index, labels, vecs, self.fast)
        if self.log is not None:
            self.log.append((labels, vecs.copy()))

    def apply_remove(self, labels: Labels) -> None:
        remove_labels(self.index, self.kind, labels, self.fast)
        if self.log is not None:
            self.log.append((labels, None))


def add_labels(index: Any, labels: Labels, vecs: Vectors, fast: Any = None) -> None:
    """Add vectors to a scope's index and, where it has them, its fast-scan codes."""
    if vecs.dtype == np.float16:
        if isinstance(index, faiss.IndexIDMap):
            # A flat scope's codes are IEEE halves (`flat_index`): a snapshot's are copied
            # in as they are, not widened and encoded back (5k rows: 3 ms, not 10).
            index.add_sa_codes(vecs.view(np.uint8), labels)
            return
        vecs = vecs.astype(np.float32)
    index.add_with_ids(vecs, labels)
    if fast is not None:
        fast.add_with_ids(vecs, labels)


def remove_labels(index: Any, kind: Kind, labels: Labels, fast: Any = None) -> None:
    """Remove labels from a scope's index and, where it has them, its fast-scan codes."""
    if fast is not None:
        # Fast-scan lists keep no id hashtable (FAISS refuses one for their block layout):
        # this is a pass over the lists' ids, ~1 ms at 200k, for a batch of any size.
        fast.remove_ids(np.ascontiguousarray(labels, dtype=np.int64))
    if kind == "ivf":
        # With the hashtable direct map, removal finds each id without scanning every list;
        # that path takes an IDSelectorArray only.
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        index.remove_ids(faiss.IDSelectorArray(len(labels), faiss.swig_ptr(labels)))
    else:
        index.remove_ids(labels)


def index_labels(index: Any) -> Labels:
    """Every label an IVF index holds, read from its lists."""
    lists = index.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(index.nlist)
        if lists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def relabel(index: Any, old: Labels, new: Labels) -> None:
    """Rewrite an IVF index's labels in place, old[i] -> new[i] (every label it holds must
    be in `old`), and rebuild its direct map from them."""
    if np.array_equal(old, new):
        return
    order = np.argsort(old)
    lists = index.invlists
    # Each list's own id array (array and block lists hand out theirs, not a copy), mapped
    # in one pass: per list, searchsorted's calls cost more than the work at a million.
    views = [
        faiss.rev_swig_ptr(lists.get_ids(i), n)
        for i in range(index.nlist)
        if (n := lists.list_size(i))
    ]
    if views:
        held = np.concatenate(views)
        mapped = new[order][np.searchsorted(old[order], held)]
        start = 0
        for view in views:
            view[:] = mapped[start : start + len(view)]
            start += len(view)
    kind = index.direct_map.type
    if kind != _NO_MAP:
        index.set_direct_map_type(_NO_MAP)  # setting the type it has is a no-op
        index.set_direct_map_type(kind)


def replay(index: Any, kind: Kind, pending: list[LogEntry], fast: Any = None) -> None:
    for labels, vecs in pending:
        if vecs is None:
            remove_labels(index, kind, labels, fast)
        else:
            add_labels(index, labels, vecs, fast)
