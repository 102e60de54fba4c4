"""The fast first stage of a large IVF scope's search: 4-bit product-quantised codes
scanned with SIMD (FAISS's fast-scan), their shortlist re-ranked from the scope's 8-bit
codes.

Why a second set of codes: at a million vectors a query must visit many lists to find its
near duplicate (where vectors spread evenly, as random ones do, a paraphrase's source
often sits in another list than the query's nearest: the side-by-side benchmark's 1M
scope chose nprobe 269 of 2,648 lists), and the 8-bit scan costs ~100 ns a vector, so
~8 ms a search. A 4-bit code of 8 dimensions per byte-half (24 B a vector at 384-d) is
scanned several times faster, but its scores are rough (a random unit vector scores ~0.4
against itself): they only pick candidates, and the best SHORTLIST of them are scored
again from the 8-bit codes, within ~0.003 of the float score, as a search without them
would be. Measured on isotropic random unit vectors, one thread: at 200k and
nprobe 269, p50 0.37 ms against 2.91 for the 8-bit scan alone, at the same recall@1 (0.993);
through FaissIndex at 1M (benchmarks/results/ann_random.json), p50 0.74 / p99 1.10 ms at
recall@1 0.995 where a hit is possible.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from cache_service.backends.faiss_scope import Labels, Scope, probe
from cache_service.protocols import Vector

DIMS_PER_CODE = 8
"""Dimensions per 4-bit sub-quantiser: 384-d vectors take 48 of them, 24 B a vector."""

SHORTLIST = 16
"""Candidates the fast-scan codes hand to the re-rank for a search of up to 4 results (4 per
result beyond): measured at 1M random vectors, 8 and 16 gave the same recall@1."""


WORTH_IT_CODES = 2048
"""8-bit codes a search must scan (nprobe x the mean list size) from which fast-scan codes
pay: their shortlist's decode and re-rank cost ~0.1 ms a search, the 8-bit scan ~90 ns a code
(measured: clustered 100k vectors, nprobe 1, ~80 codes: 0.13 ms without them, 0.21 with;
random 200k, nprobe 64, ~7k codes: 0.72 ms without, 0.28 with)."""


def worth_it(codes_scanned: float) -> bool:
    return codes_scanned >= WORTH_IT_CODES


def supports(dim: int) -> bool:
    """Whether vectors of this dimension split into whole sub-quantisers."""
    return dim >= 2 * DIMS_PER_CODE and dim % DIMS_PER_CODE == 0


def new_index(ivf: Any) -> Any:
    """An untrained fast-scan IVF over the same lists as `ivf` (a copy of its trained
    centroids, so both put a vector in the same list). Train it on the IVF's training
    vectors (that trains the product quantiser only), and fill it with add_with_ids, which
    assigns lists again: fast-scan's add_core ignores a precomputed assignment (codes given
    one came out wrong, FAISS 1.15)."""
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    quantizer = faiss.IndexFlatIP(ivf.d)
    quantizer.add(centroids)
    fast = faiss.IndexIVFPQFastScan(
        quantizer, ivf.d, ivf.nlist, ivf.d // DIMS_PER_CODE, 4, faiss.METRIC_INNER_PRODUCT
    )
    # Codes of the vectors themselves, as the 8-bit ones are: the re-rank decodes those.
    fast.by_residual = False
    return fast


def lacking(s: Scope) -> bool:
    """Whether an IVF scope's 8-bit codes want fast-scan codes it does not have."""
    return (
        s.kind == "ivf"
        and s.fast is None
        and isinstance(s.index, faiss.IndexIVFScalarQuantizer)
        and supports(s.index.d)
        and worth_it(s.nprobe * s.index.ntotal / s.nlist)
    )


def search(codes: Any, fast: Any, queries: Vector, k: int, nprobe: int) -> tuple[Vector, Labels]:
    """The top `k` of each query in the IVF `codes`, as FAISS's search returns them (scores
    and labels, -1 where fewer were found): where there are fast-scan codes `fast`, their
    shortlist scored from `codes`."""
    if fast is None:
        scores, found = codes.search(queries, k, params=probe(nprobe))
        return scores, found
    want = max(SHORTLIST, 4 * k)
    _, short = fast.search(queries, want, params=probe(nprobe))
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    labels = np.full((len(queries), k), -1, dtype=np.int64)
    for i, row in enumerate(short):
        found = row[row >= 0]
        if not len(found):
            continue
        exact = codes.reconstruct_batch(found) @ queries[i]
        top = np.argsort(-exact, kind="stable")[:k]
        scores[i, : len(top)] = exact[top]
        labels[i, : len(top)] = found[top]
    return scores, labels
