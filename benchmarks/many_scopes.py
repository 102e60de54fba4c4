"""Memory and restart of the sidecar with its entries spread over many small scopes.

The side-by-side benchmark keeps its entries in one scope, promoted to an IVF of 8-bit codes.
A cache with many tenants, models and system prompts keeps most of them in scopes under
`ivf_min`, which stay flat; this fills a store with `--entries` random unit vectors spread
evenly over `--scopes` scopes (straight through `DiskCacheStore`, as the proxy stores them)
and, for each source tree, starts `serve` three times: on an empty data dir (the baseline),
with no index snapshot (a rebuild from the store; its first snapshot is saved on the way
out), and again from that snapshot. It reports start-to-ready and RSS at ready and 6 s
later ("settled": the exact keys listed), per entry over the empty start.

    .venv/bin/python -m benchmarks.many_scopes --entries 1000000 --scopes 200 \\
        [--tree /tmp/other-worktree] [--rounds 2] [--out benchmarks/results/many_scopes.json]

The store is kept under --data-root and reused by later runs of the same shape.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import latency as L
from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.store import DiskCacheStore
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.keys import build_keys
from cache_service.cache.semantic import SemanticCache
from cache_service.cache.tenancy import credential_identity
from cache_service.protocols import SystemClock
from cache_service.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
SETTLE_S = 6.0


def fill(data_dir: Path, entries: int, scopes: int) -> float:
    """`entries` random unit vectors, entry i in scope i mod `scopes`; the seconds it took."""
    settings = load_settings(data_dir=data_dir)
    tenant = credential_identity({k.lower(): v for k, v in L.HEADERS.items()})
    store = DiskCacheStore(settings.store_dir, settings.store_size_limit_bytes)
    maker = SemanticCache(store, FaissIndex(L.DIM), SystemClock(), AcceptConfig())
    rows = L.prefill_entries(entries, [], np.zeros((0, L.DIM), np.float32), 7)
    started = time.perf_counter()
    try:
        for start in range(0, entries, L.PREFILL_BATCH):
            with store._cache.transact():  # one commit per batch, as latency.prefill does
                for i, (prompt, vector) in enumerate(
                    itertools.islice(rows, L.PREFILL_BATCH), start
                ):
                    keys = build_keys(
                        L.chat_body(prompt), tenant, max_semantic_chars=settings.semantic_max_chars
                    )
                    store.put(
                        maker.new_entry(
                            # The request's own scope, made one of `scopes` by its last digits.
                            scope=f"{keys.scope[:-6]}{i % scopes:06d}",
                            exact_key=keys.exact_key,
                            namespace=keys.tenant,
                            model=keys.model,
                            prompt=keys.prompt,
                            embedding=np.ascontiguousarray(vector, dtype=np.float32),
                            response=L.fake_completion(prompt, i),
                            ttl_s=L.TTL_S,
                            prompt_tokens=30,
                            completion_tokens=60,
                        )
                    )
    finally:
        store.close()
    return time.perf_counter() - started


def start(tree: Path, data_dir: Path) -> dict[str, float]:
    """One `serve` from `tree` over `data_dir`: seconds to ready, RSS at ready and settled."""
    procs = L.Procs()
    work = Path(tempfile.mkdtemp(prefix="many-scopes-"))
    try:
        _, sim = L.start_simulator(procs, work)
        began = time.perf_counter()
        side = L.start_sidecar(
            data_dir,
            argparse.Namespace(sweep_interval=3600.0, log_level="INFO"),
            procs,
            sim,
            work / "sidecar.log",
            cwd=tree,
            env_extra={},
        )
        ready = time.perf_counter() - began
        at_ready = L.rss_mib(side.proc.pid) or 0.0
        time.sleep(SETTLE_S)
        settled = L.rss_mib(side.proc.pid) or 0.0
        return {"ready_s": round(ready, 1), "rss_mib": at_ready, "settled_mib": settled}
    finally:
        procs.close()  # a clean stop: the sidecar saves its snapshot on the way out
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--scopes", type=int, default=200)
    p.add_argument("--tree", action="append", type=Path, help="source tree (default: this)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()) / "many-scopes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/many_scopes.json")
    args = p.parse_args()
    trees = args.tree or [ROOT]
    data = args.data_root / f"{args.entries}-{args.scopes}" / "data"
    empty = args.data_root / "empty" / "data"
    report: dict[str, Any] = {"entries": args.entries, "scopes": args.scopes, "runs": []}
    if not data.exists():
        report["fill_s"] = round(fill(data, args.entries, args.scopes), 1)
        print(f"filled in {report['fill_s']} s", flush=True)
    for rnd, tree in itertools.product(range(args.rounds), trees):
        shutil.rmtree(empty / "index-snapshot", ignore_errors=True)
        shutil.rmtree(data / "index-snapshot", ignore_errors=True)
        base = start(tree, empty)
        rebuild = start(tree, data)
        restored = start(tree, data)
        per = {
            name: {
                **run,
                "bytes_per_entry": round((run["rss_mib"] - base["rss_mib"]) * 2**20 / args.entries),
                "settled_bytes_per_entry": round(
                    (run["settled_mib"] - base["settled_mib"]) * 2**20 / args.entries
                ),
            }
            for name, run in (("rebuild", rebuild), ("from_snapshot", restored))
        }
        run = {
            "round": rnd,
            "tree": str(tree),
            "load_avg": os.getloadavg()[0],
            "empty": base,
            **per,
        }
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
