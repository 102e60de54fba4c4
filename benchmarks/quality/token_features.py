"""Research: do token-level alignment features from MiniLM (BERTScore-style) separate QQP
duplicates from near-misses better than the sentence cosine? Writes /tmp/quality_cache/tok_*.npy.

For each pair with cosine >= 0.75 (the only ones a policy could serve), both sentences'
contextual token embeddings are aligned greedily: each token's best cosine on the other side.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys
import time

import numpy as np

from benchmarks.quality.datasets import standard_sets
from benchmarks.quality.embed_cache import CACHE_DIR, cached_similarities, load_model

STOP_PIECES = {"[CLS]", "[SEP]", "?", ".", ","} | set(
    "the a an is are of to in do does i how what can for and my be it you".split()  # noqa: SIM905
)


def pair_features(ta: np.ndarray, tb: np.ndarray, ka: np.ndarray, kb: np.ndarray) -> list[float]:
    m = ta @ tb.T
    ra, rb = m.max(axis=1), m.max(axis=0)
    ca, cb = ra[ka] if ka.any() else ra, rb[kb] if kb.any() else rb
    return [
        float(min(ca.min(), cb.min())),  # worst-aligned content token either side
        float((ca.mean() + cb.mean()) / 2),  # BERTScore-F-ish over content tokens
        float(min(np.sort(ca)[:2].mean(), np.sort(cb)[:2].mean())),
    ]


def main() -> None:
    model = load_model()
    tok = model.tokenizer
    names = sys.argv[1:] or ["qqp_fit", "qqp_held"]
    sets = standard_sets()
    for name in names:
        pairs = sets[name]
        sim = cached_similarities(name)
        idx = np.flatnonzero(sim >= 0.75)
        t0 = time.time()
        texts = [t for i in idx for t in (pairs[i].text_a, pairs[i].text_b)]
        embs = model.encode(texts, batch_size=128, output_value="token_embeddings")
        feats = np.zeros((len(pairs), 3), dtype=np.float32)
        feats[:] = np.nan
        for j, i in enumerate(idx):
            out = []
            for e, t in ((embs[2 * j], texts[2 * j]), (embs[2 * j + 1], texts[2 * j + 1])):
                e = e.numpy()
                e = e / np.linalg.norm(e, axis=1, keepdims=True)
                ids = tok(t, truncation=True, max_length=256)["input_ids"]
                pieces = tok.convert_ids_to_tokens(ids)[: len(e)]
                keep = np.array([p.lower() not in STOP_PIECES for p in pieces])
                out.append((e, keep))
            feats[i] = pair_features(out[0][0], out[1][0], out[0][1], out[1][1])
        np.save(CACHE_DIR / f"tok_{name}.npy", feats)
        print(name, len(idx), f"{time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
