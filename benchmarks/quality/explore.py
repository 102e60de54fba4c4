"""Guard research on cached similarities: bare cosine vs. acceptance policies, per dataset.

Run ``python -m benchmarks.quality.embed_cache`` first (once), then this.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import numpy as np

from benchmarks.quality.datasets import Pair, standard_sets
from benchmarks.quality.embed_cache import cached_similarities
from benchmarks.quality.metrics import HitQuality, hit_quality
from cache_service.cache.guards import AcceptConfig, Comparison, compare, decide

SETS = ("qqp_fit", "qqp_held", "paws_dev", "gptcache_mock", "followup_cross")


def fmt(q: HitQuality) -> str:
    return (
        f"P={q.precision:.3f} R={q.recall:.3f} neg_served={q.negatives_served:.3f} "
        f"err={q.error_rate:.4f} served={q.served}"
    )


def load() -> dict[str, tuple[list[Pair], np.ndarray, list[Comparison]]]:
    sets = standard_sets()
    out = {}
    for name in SETS:
        pairs = sets[name]
        sim = cached_similarities(name)
        comps = [compare(p.text_a, p.text_b) for p in pairs]
        out[name] = (pairs, sim, comps)
    return out


def evaluate(data, config: AcceptConfig) -> dict[str, HitQuality]:  # type: ignore[no-untyped-def]
    res = {}
    for name, (pairs, sim, comps) in data.items():
        served = [decide(c, float(s), config).accepted for c, s in zip(comps, sim, strict=True)]
        res[name] = hit_quality([p.label for p in pairs], served)
    return res


def reasons(data, name: str, config: AcceptConfig) -> dict[str, dict[int, int]]:  # type: ignore[no-untyped-def]
    pairs, sim, comps = data[name]
    out: dict[str, dict[int, int]] = {}
    for p, s, c in zip(pairs, sim, comps, strict=True):
        d = decide(c, float(s), config)
        out.setdefault(d.reason, {0: 0, 1: 0})[p.label] += 1
    return out


def main() -> None:
    t0 = time.time()
    data = load()
    print(f"loaded in {time.time() - t0:.1f}s", file=sys.stderr)
    print("## bare cosine")
    for t in (0.80, 0.85, 0.90, 0.95):
        for name, (pairs, sim, _) in data.items():
            q = hit_quality([p.label for p in pairs], list(sim >= t))
            print(f"{t:.2f} {name:15s} {fmt(q)}")
    base = AcceptConfig()
    print("## default", base)
    for name, q in evaluate(data, base).items():
        print(f"{name:15s} {fmt(q)}")
    print("reasons qqp_fit (label0, label1):", reasons(data, "qqp_fit", base))
    print("reasons paws:", reasons(data, "paws_dev", base))
    variants: dict[str, dict[str, Any]] = {
        "no_numbers": dict(check_numbers=False),
        "no_negation": dict(check_negation=False),
        "no_quoted": dict(check_quoted=False),
        "no_order": dict(check_word_order=False),
        "unmatched<=1": dict(max_unmatched_words=1),
        "unmatched<=2": dict(max_unmatched_words=2),
        "no_short": dict(short_threshold=0.0),
    }
    for t in (0.75, 0.80, 0.85, 0.90):
        for vname, kw in variants.items():
            cfg = dataclasses.replace(base, threshold=t, **kw)
            r = evaluate(data, cfg)
            print(
                f"t={t:.2f} {vname:14s} "
                + " | ".join(
                    f"{n[:6]} P={q.precision:.3f} R={q.recall:.3f} N={q.negatives_served:.3f}"
                    for n, q in r.items()
                )
            )


if __name__ == "__main__":
    main()
