"""The shared Redis store and index feed, timed on a Redis of its own.

Times, with 384-d vectors and a ~1 KB answer: RedisEntryStore.put and get_by_exact_key
(p50/p99), a replica's bootstrap over N entries (iter_entries, then into FAISS), and the
delay from a put on replica A to its vector applied on replica B (B's feed in a thread,
on its real blocking read). Run: python benchmarks/redis_store.py [--entries 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.redis_store import RedisEntryStore
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.index_feed import IndexFeed
from cache_service.cache.semantic import SemanticCache
from cache_service.protocols import Entry, SystemClock
from tests.redis_server import RedisServer

DIM = 384
ANSWER = {"choices": [{"message": {"role": "assistant", "content": "x" * 1000}}]}


def ms(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {statistics.median(values) * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms"


def replica(url: str, origin: str) -> tuple[RedisEntryStore, SemanticCache]:
    store = RedisEntryStore.from_url(url, origin=origin)
    cache = SemanticCache(store, FaissIndex(DIM), SystemClock(), AcceptConfig())
    return store, cache


def entry(cache: SemanticCache, i: int, rng: np.random.Generator) -> Entry:
    v = rng.standard_normal(DIM).astype(np.float32)
    return cache.new_entry(
        scope=f"scope-{i % 4}",
        exact_key=f"key-{i}",
        namespace="bench",
        model="gpt-4o-mini",
        prompt=f"benchmark prompt number {i}",
        embedding=v / np.linalg.norm(v),
        response=ANSWER,
        ttl_s=3600,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=2_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            store_a, cache_a = replica(server.url, "a")
            samples = [entry(cache_a, i, rng) for i in range(args.samples)]
            put_s = []
            for e in samples:
                t = time.perf_counter()
                store_a.put(e)
                put_s.append(time.perf_counter() - t)
            get_s = []
            for e in samples:
                t = time.perf_counter()
                assert store_a.get_by_exact_key(e.exact_key) is not None
                get_s.append(time.perf_counter() - t)
            print(f"put:              {ms(put_s)}")
            print(f"get_by_exact_key: {ms(get_s)}")

            t = time.perf_counter()
            for i in range(args.samples, args.entries):
                store_a.put(entry(cache_a, i, rng))
            print(f"filled to {len(store_a)} entries in {time.perf_counter() - t:.1f} s")
            store_b, cache_b = replica(server.url, "b")
            t = time.perf_counter()
            read = sum(1 for _ in store_b.iter_entries())
            iter_s = time.perf_counter() - t
            feed_b = IndexFeed(cache_b, store_b)
            t = time.perf_counter()
            loaded = feed_b.bootstrap()
            boot_s = time.perf_counter() - t
            print(
                f"bootstrap of {loaded} entries: {boot_s:.2f} s"
                f" (iter_entries alone over {read}: {iter_s:.2f} s)"
            )

            # Propagation: B follows on its real blocking read; A puts one entry at a time.
            seen: dict[str, float] = {}
            applied = threading.Event()
            apply_remote = cache_b.apply_remote

            def timed(adds, deletes):  # type: ignore[no-untyped-def]
                apply_remote(adds, deletes)
                now = time.perf_counter()
                for entry_id, *_ in adds:
                    seen[entry_id] = now
                applied.set()

            cache_b.apply_remote = timed  # type: ignore[method-assign]
            stop = threading.Event()

            def follow() -> None:
                while not stop.is_set():
                    feed_b.step(block_ms=200)

            thread = threading.Thread(target=follow)
            thread.start()
            delays = []
            try:
                for i in range(500):
                    e = entry(cache_a, args.entries + i, rng)
                    applied.clear()
                    t = time.perf_counter()
                    store_a.put(e)
                    applied.wait(5)
                    delays.append(seen[e.id] - t)
                    time.sleep(0.002)
            finally:
                stop.set()
                thread.join()
            print(f"put on A -> applied on B (put included): {ms(delays)}")
            print(f"volume (used_memory): {store_a.volume() / 1e6:.1f} MB for {len(store_a)}")
            store_a.close()
            store_b.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
