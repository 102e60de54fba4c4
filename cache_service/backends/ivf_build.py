"""Building an IVF index for one scope, and measuring it: trained on the scope's own
vectors, each list allocated once at its final size, and nprobe chosen as the smallest that
reaches the target recall@1 against the exact result on held-out vectors with noise added.
Pure given its reader (FaissIndex supplies one that reads the live scope a chunk at a time
under its read lock)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import faiss
import numpy as np
import numpy.typing as npt

from cache_service.backends import fast_scan
from cache_service.backends.faiss_scope import Labels
from cache_service.protocols import Vector

TARGET_RECALL = 0.99
"""Recall@1 against the flat result that the chosen nprobe must reach on the sample."""

_RECALL_QUERIES = 1000
"""Stored vectors, with noise added, used as queries to measure recall@1."""

RECALL_FLOOR = 0.7
"""The lowest cosine a search may serve from, where nothing better is known: the verifier's
calibrated floor, the loosest any configuration of the sidecar serves from."""

SQ_MIN_TRAIN = 4096
"""Training vectors from which a scope's IVF keeps 8-bit codes rather than floats."""

FAISS: Any = faiss  # for what its type stubs lack

Reader = Callable[[Labels], Iterator[tuple[Labels, Vector]]]
"""The vectors of those labels still in the scope, a chunk at a time, with their labels."""


class Shrunk(Exception):
    """Too few of a scope's vectors left, mid-build, to train the lists."""


class Built(NamedTuple):
    index: Any
    fast: Any
    """The fast-scan first stage (fast_scan) of an 8-bit index, or None."""
    nlist: int
    nprobe: int
    recall: float


def build_ivf(
    read: Reader,
    labels: Labels,
    *,
    dim: int,
    seed: int,
    target_recall: float,
    floor: float = RECALL_FLOOR,
) -> Built:
    """An IVF index of the vectors under `labels` (read through `read`, a chunk at a time),
    with fast-scan codes where its 8-bit ones would make a search scan thousands, the nprobe
    chosen and the recall@1 measured at it, on queries between cosine `floor` and halfway
    to 1 from their source (`noisy`). Raises Shrunk when too few of them are left to train
    the lists."""
    n = len(labels)
    # ≈ 4·sqrt(n) lists, at least 4 training points each (FAISS warns below 39 but
    # only tiny test scopes go there: at ivf_min's default, n / nlist ≈ 35).
    nlist = max(1, min(round(4 * math.sqrt(n)), n // 4))
    rng = np.random.default_rng(seed)
    # Trained on up to 40 sampled vectors per list. The recall queries come from other
    # vectors (where the scope is large enough): centroids fit the points they were
    # trained on, and queries made from those overstated recall (measured at 1M: 0.999
    # on training points, 0.985 on others).
    m = min(n, _RECALL_QUERIES)
    train_n = min(n, 40 * nlist)
    picked = labels[rng.permutation(n)[: min(n, train_n + m)]]
    sample = np.concatenate([np.zeros((0, dim), np.float32), *(vecs for _, vecs in read(picked))])
    if len(sample) < nlist:
        raise Shrunk  # most of the scope was removed meanwhile
    ivf = _empty_ivf(dim, nlist, train_n)
    ivf.cp.spherical = True
    ivf.cp.niter = 10
    ivf.cp.max_points_per_centroid = 40
    ivf.cp.seed = seed
    ivf.train(sample[:train_n])
    fast = None
    if train_n >= SQ_MIN_TRAIN and fast_scan.supports(dim):
        # Trained now, while the sample is here (seconds: the product quantiser only, the
        # lists are ivf's); filled below only if the chosen nprobe makes it worth it.
        fast = fast_scan.new_index(ivf)
        fast.train(sample[:train_n])
    queries = noisy(sample[-m:], rng, floor)
    del sample
    ivf.set_direct_map_type(FAISS.DirectMap.Hashtable)  # removal by id, reconstruct
    truth = _fill(ivf, nlist, read, labels, queries)
    if fast is not None:
        # Fast-scan codes pay unless the 8-bit ones alone reach the target below the
        # nprobe at which they would: one measurement there, where an 8-bit search is
        # still cheap (not a search for the nprobe on 8-bit codes at 1M, ~8 ms a query).
        cheap = math.ceil(fast_scan.WORTH_IT_CODES * nlist / n) - 1
        if (
            cheap >= 1
            and recall_at_1(ivf, None, queries, truth, min(cheap, nlist), read) >= target_recall
        ):
            fast = None
        else:
            for got, vecs in read(labels):
                fast.add_with_ids(vecs, got)
    nprobe, recall = choose_nprobe(ivf, fast, nlist, queries, truth, target_recall, read)
    return Built(ivf, fast, nlist, nprobe, recall)


def _empty_ivf(dim: int, nlist: int, train_n: int) -> Any:
    """The untrained IVF for a scope. From SQ_MIN_TRAIN training vectors on, vectors are
    kept as 8-bit scalar codes (384 B each instead of 1,536 B as float32, so a million-entry
    scope fits in ~0.5 KB per entry); scores then come back within ~0.003 of the float ones
    (the cache re-scores candidates from the stored entry's own vector before deciding),
    probes are as fast or faster, and recall@1 is measured on the codes, as served. Each
    dimension's code range is the training vectors' range widened by half on each side: a
    later vector outside it would be clipped, and with few training vectors the range is
    narrow (20 random unit vectors: score errors of 0.26 unwidened, 0.02 widened), which is
    why smaller scopes keep float vectors."""
    if train_n < SQ_MIN_TRAIN:
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    # Codes of the vectors themselves, not of their residuals to the list centroid: as
    # precise here and one add per vector cheaper.
    ivf = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim),
        dim,
        nlist,
        faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
        False,
    )
    ivf.sq.rangestat = FAISS.ScalarQuantizer.RS_minmax
    ivf.sq.rangestat_arg = 0.5
    return ivf


def _fill(ivf: Any, nlist: int, read: Reader, labels: Labels, queries: Vector) -> Vector:
    """Add the scope's vectors to the trained IVF with each list allocated once at its
    final size (added entry by entry, lists grow by doubling and carry ~40 % of unused
    capacity: an IVF scope of 1M vectors took 390 MB more than the flat one). Returns the
    exact best similarity of each query over what was added."""
    assigned: list[tuple[Labels, npt.NDArray[np.int64]]] = []
    counts = np.zeros(nlist, dtype=np.int64)
    for present, vecs in read(labels):
        coarse = np.ascontiguousarray(ivf.quantizer.assign(vecs, 1).ravel(), dtype=np.int64)
        counts += np.bincount(coarse, minlength=nlist)
        assigned.append((present, coarse))
    lists: Any = faiss.downcast_InvertedLists(ivf.invlists)
    for list_no, size in enumerate(counts.tolist()):
        if size:
            lists.resize(list_no, size)  # from empty: allocates exactly `size`
            lists.resize(list_no, 0)  # capacity kept
    truth = np.full(len(queries), -np.inf, dtype=np.float32)
    for present, coarse in assigned:
        for got, vecs in read(present):  # again: some may be gone since
            if len(got) < len(present):
                coarse = coarse[np.isin(present, got)]
            ivf.add_core(
                len(got), faiss.swig_ptr(vecs), faiss.swig_ptr(got), faiss.swig_ptr(coarse)
            )
            if len(queries):
                truth = np.maximum(truth, (queries @ vecs.T).max(axis=1))
    return truth


def choose_nprobe(
    ivf: Any,
    fast: Any,
    nlist: int,
    queries: Vector,
    truth: Vector,
    target_recall: float,
    read: Reader,
) -> tuple[int, float]:
    """The smallest nprobe whose recall@1 against the exact result, on stored vectors
    with noise added as queries, reaches target_recall; and that recall. Searches go
    through the fast-scan codes `fast` where there are some, as they will be served."""
    measured: dict[int, float] = {}

    def recall(nprobe: int) -> float:
        if nprobe not in measured:
            measured[nprobe] = recall_at_1(ivf, fast, queries, truth, nprobe, read)
        return measured[nprobe]

    lo, hi = 0, 1  # recall(lo) < target (or lo == 0): doubling, then bisection
    while hi < nlist and recall(hi) < target_recall:
        lo, hi = hi, min(2 * hi, nlist)
    while hi - lo > 1:  # the smallest in (lo, hi] that reaches the target
        mid = (lo + hi) // 2
        if recall(mid) >= target_recall:
            hi = mid
        else:
            lo = mid
    return hi, recall(hi)


def noisy(vecs: Vector, rng: np.random.Generator, floor: float) -> Vector:
    """Paraphrase-like queries: each vector plus Gaussian noise, renormalised, at a cosine
    to it drawn between `floor` and halfway from there to 1.

    Why from the floor: recall matters only for the neighbours a search can serve, those at
    or above the lowest threshold it is ever run at (`min_threshold`, or the verifier's
    floor with a verifier on). A query farther than that from everything stored is a miss
    whatever the index returns, yet such far queries set the nprobe when they are measured:
    at 1M random vectors, queries down to cos 0.71 asked for 292 of 2,318 lists, ~1 ms a
    search in the sidecar. And why not above halfway: nearer queries are the easy ones,
    found in the first lists; the measure is kept where misses happen, at the floor.

    Noise of norm r orthogonal to a unit vector leaves cosine 1 / sqrt(1 + r²) to it, so
    r = sqrt(1 / cos² - 1)."""
    noise = rng.standard_normal(vecs.shape).astype(np.float32)
    noise -= np.sum(noise * vecs, axis=1, keepdims=True) * vecs  # orthogonal to its source
    cosine = rng.uniform(floor, (1 + floor) / 2, size=(len(vecs), 1))
    norms = np.sqrt(1 / cosine**2 - 1).astype(np.float32)
    noise *= norms / np.linalg.norm(noise, axis=1, keepdims=True)
    queries = vecs + noise
    out: Vector = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    return out


def recall_at_1(
    ivf: Any, fast: Any, queries: Vector, truth: Vector, nprobe: int, read: Reader
) -> float:
    """Share of queries whose top-1 is as similar as the exact best. A tie (a duplicate
    vector) counts as found, so scores are compared, not labels; and the index's own score
    is approximate for a quantised index, so the top-1's vector is read back through `read`
    and scored exactly (a label gone from the source meanwhile counts as not found)."""
    _, got = fast_scan.search(ivf, fast, queries, 1, nprobe)
    top = got[:, 0]
    exact = np.full(len(queries), -np.inf, dtype=np.float32)
    wanted = np.unique(top[top >= 0])
    for present, vecs in read(wanted):
        rows = {label: row for row, label in enumerate(present.tolist())}
        for i, label in enumerate(top.tolist()):
            row = rows.get(label)
            if row is not None:
                exact[i] = float(queries[i] @ vecs[row])
    return float(np.mean(exact >= truth - 1e-5))
