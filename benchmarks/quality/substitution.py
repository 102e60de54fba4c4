"""Semantic substitution guard research: do the one-sided content words mean the same thing?

Hypothesis: high-cosine QQP negatives often differ in a content word that changes the subject
("laptop for programming" / "for gaming", "Spain" / "Colombia"), while duplicates differ in
near-synonyms ("reset" / "change", "quickly" / "fast"). For pairs above a cosine threshold and
past the default guards, embed the one-sided words with MiniLM and refuse when a one-sided word
has no close counterpart on the other side.

Scores per pair (higher = more alike; 1.0 when no word is one-sided):
- ``word_all``: min over one-sided words w of max cos(w, v) over the OTHER prompt's content
  words v (each word embedded alone; word vectors are cacheable across requests).
- ``word_os``: as ``word_all`` but v ranges over the other side's one-sided words only
  (a pure addition, other side empty, scores 0).
- ``phrase``: cos(embed(one-sided words of a, joined), embed(one-sided words of b, joined));
  when one side has none, the joined phrase against the whole other prompt.

Run ``python -m benchmarks.quality.embed_cache`` first (sentence cosines), then this. Word and
phrase vectors are cached under /tmp/quality_cache/subst_*.npy.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dataclasses
import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.quality.datasets import Pair, standard_sets
from benchmarks.quality.embed_cache import CACHE_DIR, cached_similarities
from benchmarks.quality.metrics import HitQuality, hit_quality
from cache_service.cache.guards import (
    _STOPWORDS,
    AcceptConfig,
    Comparison,
    _stem,
    _words,
    compare,
    decide,
)

SETS = ("qqp_fit", "qqp_held", "paws_dev", "gptcache_mock", "followup_cross")
FLOOR = 0.80  # lowest cosine threshold considered; features only computed above it
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def surface(text: str) -> dict[str, list[str]]:
    """stem -> surface content words (lower-cased), as compare() stems them."""
    out: dict[str, list[str]] = {}
    for w in _words(text):
        if w in _STOPWORDS or w.isdigit():
            continue
        out.setdefault(_stem(w), []).append(w)
    return out


@dataclasses.dataclass
class Item:
    sim: float
    label: int
    comp: Comparison
    os_a: list[str]  # one-sided surface words
    os_b: list[str]
    all_a: list[str]  # all content surface words
    all_b: list[str]
    text_a: str
    text_b: str


def prepare(pairs: Sequence[Pair], sim: np.ndarray) -> list[Item | None]:
    items: list[Item | None] = []
    for p, s in zip(pairs, sim, strict=True):
        if s < FLOOR:
            items.append(None)
            continue
        c = compare(p.text_a, p.text_b)
        sa, sb = surface(p.text_a), surface(p.text_b)
        os_a = sorted({w for st in c.unmatched_a for w in sa.get(st, [])})
        os_b = sorted({w for st in c.unmatched_b for w in sb.get(st, [])})
        all_a = sorted({w for ws in sa.values() for w in ws})
        all_b = sorted({w for ws in sb.values() for w in ws})
        items.append(Item(float(s), p.label, c, os_a, os_b, all_a, all_b, p.text_a, p.text_b))
    return items


class Embeds:
    def __init__(self) -> None:
        from cache_service.backends.embedder import SentenceTransformerEmbedder

        self.emb = SentenceTransformerEmbedder(PROJECT_ROOT / "models", "auto", 1)
        self.vec: dict[str, np.ndarray] = {}

    def add(self, texts: set[str], tag: str) -> None:
        todo = sorted((t for t in texts if t not in self.vec), key=lambda t: (len(t), t))
        if not todo:
            return
        digest = hashlib.sha256("\x00".join(todo).encode()).hexdigest()[:16]
        path = CACHE_DIR / f"subst_{tag}_{digest}.npy"
        if path.exists():
            arr = np.load(path)
        else:
            t0 = time.time()
            parts = [self.emb.embed(todo[i : i + 256]) for i in range(0, len(todo), 256)]
            arr = np.concatenate(parts).astype(np.float32)
            np.save(path, arr)
            print(f"embedded {len(todo)} {tag} in {time.time() - t0:.0f}s", file=sys.stderr)
        for t, v in zip(todo, arr, strict=True):
            self.vec[t] = v

    def m(self, ws: Sequence[str]) -> np.ndarray:
        return np.stack([self.vec[w] for w in ws])


def best_match_min(e: Embeds, src: list[str], dst: list[str]) -> float:
    """min over src of max cos to dst (1.0 for empty src, 0.0 for empty dst)."""
    if not src:
        return 1.0
    if not dst:
        return 0.0
    return float((e.m(src) @ e.m(dst).T).max(axis=1).min())


def features(e: Embeds, it: Item) -> dict[str, float]:
    if not it.os_a and not it.os_b:
        return {"word_all": 1.0, "word_os": 1.0, "phrase": 1.0}
    word_all = min(best_match_min(e, it.os_a, it.all_b), best_match_min(e, it.os_b, it.all_a))
    word_os = min(best_match_min(e, it.os_a, it.os_b), best_match_min(e, it.os_b, it.os_a))
    pa, pb = " ".join(it.os_a), " ".join(it.os_b)
    if pa and pb:
        phrase = float(e.vec[pa] @ e.vec[pb])
    else:
        one, other = (pa, it.text_b) if pa else (pb, it.text_a)
        phrase = float(e.vec[one] @ e.vec[other])
    return {"word_all": word_all, "word_os": word_os, "phrase": phrase}


def guarded(it: Item, f: dict[str, float], key: str, s: float) -> bool:
    """True when the substitution guard refuses. ``subst``: only true substitutions (words on
    both sides) are checked, with ``word_os``; additions pass."""
    if key == "subst":
        return bool(it.os_a and it.os_b) and f["word_os"] < s
    return f[key] < s


def served(
    items: list[Item | None],
    feats: list[dict[str, float] | None],
    t: float,
    key: str | None,
    s: float,
    cfg: AcceptConfig,
    oracle: bool = False,
) -> list[bool]:
    out = []
    c = dataclasses.replace(cfg, threshold=t)
    for it, f in zip(items, feats, strict=True):
        if it is None or f is None or it.sim < t or not decide(it.comp, it.sim, c).accepted:
            out.append(False)
        elif oracle:
            # Upper bound for ANY guard on one-sided words: it refuses exactly the negatives
            # that have one, and nothing else.
            out.append(it.label == 1 or not (it.os_a or it.os_b))
        else:
            out.append(key is None or not guarded(it, f, key, s))
    return out


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Mann-Whitney AUC (ties count half): P(score of a positive > score of a negative)."""
    pos = np.array([x for x, y in zip(scores, labels, strict=True) if y == 1])
    neg = np.array([x for x, y in zip(scores, labels, strict=True) if y != 1])
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def fmt(q: HitQuality) -> str:
    return f"P={q.precision:.3f} R={q.recall:.3f} N={q.negatives_served:.3f} ({q.wrong_hits})"


def main() -> None:
    t0 = time.time()
    sets = standard_sets()
    data: dict[str, tuple[list[Pair], list[Item | None]]] = {}
    for name in SETS:
        pairs = sets[name]
        data[name] = (pairs, prepare(pairs, cached_similarities(name)))
    print(f"prepared in {time.time() - t0:.0f}s", file=sys.stderr)
    e = Embeds()
    words: set[str] = set()
    phrases: set[str] = set()
    for _, items in data.values():
        for it in items:
            if it is None or (not it.os_a and not it.os_b):
                continue
            words.update(it.all_a, it.all_b)
            pa, pb = " ".join(it.os_a), " ".join(it.os_b)
            if pa and pb:
                phrases.update((pa, pb))
            else:
                phrases.update((pa or pb, it.text_b if pa else it.text_a))
    e.add(words, "words")
    e.add(phrases - set(e.vec), "phrases")
    feats = {
        name: [None if it is None else features(e, it) for it in items]
        for name, (_, items) in data.items()
    }
    base = AcceptConfig()

    def ev(name: str, t: float, key: str | None, s: float, oracle: bool = False) -> HitQuality:
        pairs, items = data[name]
        labels = [p.label for p in pairs]
        return hit_quality(labels, served(items, feats[name], t, key, s, base, oracle))

    def line(label: str, t: float, key: str | None, s: float, oracle: bool = False) -> None:
        print(f"{label:26s}", " | ".join(f"{n[:9]} {fmt(ev(n, t, key, s, oracle))}" for n in SETS))

    print("## discrimination on qqp_fit: pairs past the default guards with >=1 one-sided word")
    _, items = data["qqp_fit"]
    g0 = dataclasses.replace(base, threshold=0.0)
    for lo in (0.85, 0.90):
        sel = [
            (it, f)
            for it, f in zip(items, feats["qqp_fit"], strict=True)
            if it is not None and f is not None and it.sim >= lo and (it.os_a or it.os_b)
            and decide(it.comp, it.sim, g0).accepted
        ]  # fmt: skip
        y = [it.label for it, _ in sel]
        aucs = {k: auc(y, [f[k] for _, f in sel]) for k in ("word_all", "word_os", "phrase")}
        aucs["cosine"] = auc(y, [it.sim for it, _ in sel])
        rounded = {k: round(v, 3) for k, v in aucs.items()}
        print(f"cos>={lo}: n={len(sel)} pos={sum(y)} AUC", rounded)
    print("## sweep on qqp_fit (guard refuses when score < s)")
    for key in ("word_all", "word_os", "phrase", "subst"):
        for t in (0.85, 0.88, 0.90, 0.92):
            for s in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
                print(f"{key:8s} t={t:.2f} s={s:.2f} {fmt(ev('qqp_fit', t, key, s))}")
    print("## all sets")
    for t in (0.90, 0.92, 0.93, 0.94, 0.95):
        line(f"default t={t:.2f}", t, None, 0)
    for key, t, s in (("subst", 0.92, 0.5), ("subst", 0.90, 0.7), ("word_all", 0.92, 0.4),
                      ("word_all", 0.90, 0.3), ("phrase", 0.88, 0.4)):  # fmt: skip
        line(f"{key} t={t:.2f} s={s:.2f}", t, key, s)
    for t in (0.80, 0.85, 0.90, 0.92):
        line(f"ORACLE t={t:.2f}", t, None, 0, oracle=True)
    timing(e, [it for it in data["qqp_held"][1] if it is not None and (it.os_a or it.os_b)])


def timing(e: Embeds, items: list[Item], n: int = 300) -> None:
    """Serving cost of the extra embedding per verified candidate (ONNX, 1 thread)."""
    e.emb.embed(["warm up"])
    for mode in ("phrase pair", "every content word", "whole prompt (reference)"):
        ts = []
        for it in items[:n]:
            t0 = time.perf_counter()
            if mode == "phrase pair":
                e.emb.embed([" ".join(it.os_a) or it.text_a, " ".join(it.os_b) or it.text_b])
            elif mode == "every content word":
                e.emb.embed(sorted(set(it.all_a) | set(it.all_b)))
            else:
                e.emb.embed([it.text_b])
            ts.append((time.perf_counter() - t0) * 1000)
        a = np.array(ts)
        print(f"{mode}: median {np.median(a):.2f} ms, p90 {np.percentile(a, 90):.2f} ms")


if __name__ == "__main__":
    main()
