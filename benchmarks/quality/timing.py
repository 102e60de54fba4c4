"""Cost of one ``accept`` call on real prompt pairs (µs), for the serving-path budget."""

from __future__ import annotations

import time

from benchmarks.quality.datasets import standard_sets
from cache_service.cache.guards import AcceptConfig, accept


def main() -> None:
    sets = standard_sets()
    cfg = AcceptConfig()
    for name in ("qqp_held", "paws_dev", "gptcache_mock"):
        pairs = sets[name][:3000]
        t0 = time.perf_counter()
        for p in pairs:
            accept(p.text_a, p.text_b, 1.0, cfg)  # 1.0: force every guard to run
        dt = (time.perf_counter() - t0) / len(pairs) * 1e6
        print(f"{name}: {dt:.0f} µs per accept (all guards evaluated)")


if __name__ == "__main__":
    main()
