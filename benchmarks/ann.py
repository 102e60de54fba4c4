"""Flat against IVF in one scope of FaissIndex: build time, probe latency, recall@1, memory.

For each size, one scope is filled with clustered random unit vectors (2,000 random centres,
each vector its centre plus Gaussian noise, about cos 0.7 to it: real prompts cluster by
topic), then, in this one process and on the calling thread (OpenMP at 1 thread, as
FaissIndex sets it and as its maintenance thread builds by default):

1. flat: single-query probes (k = 4, the default search_k) through FaissIndex.search;
2. the scope is promoted by FaissIndex.maintain() (timed: training, adding, choosing
   nprobe by measured recall), and the same probes are timed on the IVF scope;
3. recall@1 of the IVF result against the flat one, on queries FaissIndex never saw:
   "paraphrase" queries (a stored vector plus noise, cos 0.97 down to 0.71 to it), "fresh"
   queries (new points around the same centres) and "duplicate" queries (stored vectors as
   they are: must come back at similarity 1.0);
4. memory: RSS growth for the flat scope, RSS after the swap, and the peak during the build.

    .venv/bin/python benchmarks/ann.py [--sizes 10000,20000,30000,50000,100000,1000000]
        [--queries 1000] [--flat-queries-1m 200] [--out benchmarks/results/ann.json]

Not a test; about 5-8 minutes on the reference 2-core box, most of it the 1M build.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cache_service.backends.faiss_index import FaissIndex  # noqa: E402

DIM = 384
K = 4
Array = np.ndarray[Any, np.dtype[np.float32]]


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def unit(v: Array) -> Array:
    out: Array = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def clustered(
    n: int, centres: Array, spread: float, rng: np.random.Generator, chunk: int = 100_000
) -> Array:
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        noise = rng.standard_normal((m, DIM)).astype(np.float32)
        if not len(centres):  # --centres 0: isotropic, the side-by-side's filler
            out[start : start + m] = unit(noise)
            continue
        noise *= spread / np.linalg.norm(noise, axis=1, keepdims=True)
        out[start : start + m] = unit(centres[rng.integers(0, len(centres), m)] + noise)
    return out


def paraphrases(stored: Array, n: int, rng: np.random.Generator) -> Array:
    q = stored[rng.choice(len(stored), n, replace=False)]
    noise = rng.standard_normal(q.shape).astype(np.float32)
    noise *= rng.uniform(0.25, 1.0, (n, 1)).astype(np.float32) / np.linalg.norm(
        noise, axis=1, keepdims=True
    )
    return unit(q + noise)


def probe(index: FaissIndex, queries: Array) -> tuple[list[float], list[float], list[str]]:
    """Per query: latency in ms, best similarity, best id."""
    ms, best, ids = [], [], []
    for q in queries:
        t = time.perf_counter()
        hits = index.search("s", q, K)
        ms.append((time.perf_counter() - t) * 1000)
        best.append(hits[0].similarity)
        ids.append(hits[0].entry_id)
    return ms, best, ids


def pct(values: list[float], p: float) -> float:
    return round(float(np.percentile(values, p)), 3)


def recall(
    flat_best: list[float], ivf_best: list[float], floor: float = -1.0, tie: float = 1e-5
) -> float | None:
    """Share of queries whose IVF top-1 is as similar as the flat one, within `tie`,
    among those whose flat top-1 reaches `floor`."""
    f, i = np.array(flat_best), np.array(ivf_best)
    keep = f >= floor
    if not keep.any():
        return None
    return round(float(np.mean(i[keep] >= f[keep] - tie)), 4)


Corpus = tuple[Array, dict[str, Array]]
"""The vectors to store and the queries of each kind."""


def synthetic(n: int, args: argparse.Namespace, centres: Array) -> Corpus:
    rng = np.random.default_rng(n)
    vectors = clustered(n, centres, args.spread, rng)
    nq = args.queries if n < 1_000_000 else args.flat_queries_1m
    return vectors, {
        "paraphrase": paraphrases(vectors, nq, rng),
        "fresh": clustered(nq, centres, args.spread, rng),
        "duplicate": vectors[rng.choice(n, nq, replace=False)],
    }


def qqp(args: argparse.Namespace) -> Corpus:
    """Real embedded questions: every distinct question of the QQP pairs, less the second
    side of `--queries` duplicate pairs, which are held out as real paraphrase queries (their
    first side is stored); "fresh" queries are held-out questions of non-duplicate pairs.
    The embeddings (the sidecar's ONNX MiniLM) are cached at --qqp-cache: ~15 minutes here."""
    import gzip

    with gzip.open(args.qqp, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))
    held: set[str] = set()
    para: list[str] = []
    fresh: list[str] = []
    for i in order.tolist():
        a, b, label = rows[i]["text_a"], rows[i]["text_b"], rows[i]["label"]
        if a == b or a in held or b in held:
            continue
        if label == 1 and len(para) < args.queries:
            para.append(b)
            held.add(b)
        elif label == 0 and len(fresh) < args.queries:
            fresh.append(b)
            held.add(b)
    stored = sorted({t for r in rows for t in (r["text_a"], r["text_b"])} - held)
    texts = stored + para + fresh
    cache = Path(args.qqp_cache)
    if cache.exists() and np.load(cache, mmap_mode="r").shape[0] == len(texts):
        vectors: Array = np.load(cache)
    else:
        from cache_service.backends.embedder import load_embedder

        embedder = load_embedder(ROOT / "models", "onnx", threads=os.cpu_count() or 1)
        vectors = np.empty((len(texts), DIM), dtype=np.float32)
        # By length, so that a batch pads little.
        by_len = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(texts), 64):
            rows = by_len[start : start + 64]
            vectors[rows] = embedder.embed([texts[i] for i in rows])
            print(f"embedded {start + 64} of {len(texts)}", end="\r", flush=True)
        np.save(cache, vectors)
    n = len(stored)
    return vectors[:n], {
        "paraphrase": vectors[n : n + len(para)],
        "fresh": vectors[n + len(para) :],
        "duplicate": vectors[rng.choice(n, args.queries, replace=False)],
    }


def run_size(corpus: Corpus, floor: float) -> dict[str, Any]:
    vectors, queries = corpus
    n, nq = len(vectors), len(queries["paraphrase"])
    labels = [f"e{i}" for i in range(n)]
    gc.collect()
    rss0 = status_mb("VmRSS")
    index = FaissIndex(DIM, ivf_min=n, background=False, recall_floor=floor)
    t = time.perf_counter()
    index.add_many("s", labels, vectors)
    add_s = time.perf_counter() - t
    rss_flat = status_mb("VmRSS") - rss0  # the index's vectors and id maps
    del labels
    gc.collect()
    rss0 = status_mb("VmRSS") - rss_flat  # the process without the index

    flat = {kind: probe(index, q) for kind, q in queries.items()}

    reset_peak()
    t = time.perf_counter()
    assert index.maintain() == 1
    build_s = time.perf_counter() - t
    peak_build = status_mb("VmHWM") - rss0
    gc.collect()
    rss_ivf = status_mb("VmRSS") - rss0
    st = index.stats()["s"]
    assert st.kind == "ivf"

    ivf = {kind: probe(index, q) for kind, q in queries.items()}
    fast = index._scopes["s"].fast  # the fast-scan first stage, where it has one
    # A scope of thousands keeps 8-bit codes, so its scores are approximate: recall compares
    # the exact similarity of what it found, from the float vectors.
    approx = {kind: ivf[kind][1] for kind in ivf}
    for kind, q in queries.items():
        rows = [int(entry_id[1:]) for entry_id in ivf[kind][2]]
        exact = np.einsum("ij,ij->i", q, vectors[rows]).tolist()
        ivf[kind] = (ivf[kind][0], exact, ivf[kind][2])
    score_error = max(
        abs(a - e) for kind in ivf for a, e in zip(approx[kind], ivf[kind][1], strict=True)
    )
    flat_ms = [x for kind in flat for x in flat[kind][0]]
    ivf_ms = [x for kind in ivf for x in ivf[kind][0]]
    flat_best = [x for kind in flat for x in flat[kind][1]]
    ivf_best = [x for kind in ivf for x in ivf[kind][1]]
    dup_sims = ivf["duplicate"][1]
    out = {
        "size": n,
        "queries_per_kind": nq,
        "flat_add_s": round(add_s, 2),
        "ivf_build_s": round(build_s, 1),
        "nlist": st.nlist,
        "nprobe": st.nprobe,
        "recall_at_1_measured_by_index": st.recall_at_1,
        "recall_at_1_paraphrase": recall(flat["paraphrase"][1], ivf["paraphrase"][1]),
        "recall_at_1_fresh": recall(flat["fresh"][1], ivf["fresh"][1]),
        "recall_at_1_duplicate": recall(flat["duplicate"][1], ivf["duplicate"][1]),
        # Only queries that could be hits: the flat top-1 at or above the verifier's floor.
        "recall_at_1_above_floor_0_7": recall(flat_best, ivf_best, floor=0.7),
        # Counting a top-1 within the 8-bit codes' score error of the best as found: among
        # near-identical stored texts (QQP repeats questions) the codes may rank a neighbour
        # 0.002 less similar first, which the strict figure counts as a miss.
        "recall_at_1_above_floor_0_7_within_0_005": recall(
            flat_best, ivf_best, floor=0.7, tie=0.005
        ),
        "recall_at_1_paraphrase_within_0_005": recall(
            flat["paraphrase"][1], ivf["paraphrase"][1], tie=0.005
        ),
        "queries_above_floor": sum(x >= 0.7 for x in flat_best),
        # The same at the floor the index measured its recall down to (--floor).
        "recall_floor": floor,
        "recall_at_1_above_recall_floor": recall(flat_best, ivf_best, floor=floor),
        "recall_at_1_above_recall_floor_within_0_005": recall(
            flat_best, ivf_best, floor=floor, tie=0.005
        ),
        "queries_above_recall_floor": sum(x >= floor for x in flat_best),
        "duplicate_min_similarity": round(min(dup_sims), 6),
        "ivf_score_max_error": round(score_error, 5),
        "ivf_code_bytes": int(index._scopes["s"].index.code_size),
        "fast_scan_code_bytes": None if fast is None else int(fast.code_size),
        "flat_probe_p50_ms": pct(flat_ms, 50),
        "flat_probe_p99_ms": pct(flat_ms, 99),
        "ivf_probe_p50_ms": pct(ivf_ms, 50),
        "ivf_probe_p99_ms": pct(ivf_ms, 99),
        "rss_flat_mb": round(rss_flat, 1),
        "rss_ivf_mb": round(rss_ivf, 1),
        "rss_peak_during_build_mb": round(peak_build, 1),
        "raw_vectors_mb": round(n * DIM * 4 / 2**20, 1),
    }
    print(json.dumps(out), flush=True)
    del index
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,20000,30000,50000,100000,1000000")
    ap.add_argument("--queries", type=int, default=1000, help="per kind, below 1M")
    ap.add_argument("--flat-queries-1m", type=int, default=200, help="per kind, at 1M")
    ap.add_argument("--centres", type=int, default=2000, help="0: isotropic random vectors")
    ap.add_argument("--spread", type=float, default=1.0, help="noise norm: cos ≈ 0.71")
    ap.add_argument("--qqp", help="real questions instead: ../shared/data/qqp_pairs.jsonl.gz")
    ap.add_argument("--qqp-cache", default="/tmp/ann-qqp-vectors.npy")
    ap.add_argument(
        "--floor",
        type=float,
        default=0.7,
        help="the lowest cosine a search serves from, the index's recall_floor (the sidecar's:"
        " min_threshold, 0.92 by default; the verifier's floor, 0.7, with one)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ann.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((args.centres, DIM)).astype(np.float32))
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_before = os.getloadavg()
    if args.qqp:
        results = [run_size(qqp(args), args.floor)]
    else:
        results = [
            run_size(synthetic(int(n), args, centres), args.floor) for n in args.sizes.split(",")
        ]
    doc = {
        "note": (
            "One FaissIndex scope, single-query probes (k=4) on the calling thread, OpenMP at"
            " 1 thread; builds by maintain() on the calling thread at 1 thread (the default"
            " build_threads). Clustered random unit vectors: centres + Gaussian noise"
            " (centres 0: isotropic random unit vectors, no clusters; with qqp: the embedded"
            " QQP questions, queries the held-out side of duplicate pairs)."
            " recall_at_1_*: the IVF top-1 similarity equals the flat one (ties count)."
            " RSS figures are growth over the process before the index was filled."
        ),
        "started_utc": started,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {
            "dim": DIM,
            "k": K,
            "centres": args.centres,
            "spread": args.spread,
            "queries_per_kind": args.queries,
            "flat_queries_1m": args.flat_queries_1m,
        },
        "results": results,
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
