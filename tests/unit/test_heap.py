"""Freed heap goes back to the OS when the large pieces of work are done: a real trim shrinks
a process's resident memory, and a restore, a rebuild, a snapshot save and an index build
each ask for one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache_service import heap
from cache_service.backends import faiss_index
from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.store import DiskCacheStore
from cache_service.cache import index_upkeep
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.semantic import SemanticCache
from tests.fakes import FakeClock

# Frees 96 MiB of 1 MiB blocks that glibc keeps (a live block above them stops free() from
# trimming the top of the heap; freeing a 16 MiB block first raised glibc's mmap threshold,
# so the 1 MiB blocks came from the heap), then trims. Prints resident MiB before and after.
_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
from cache_service.heap import give_back
def rss():
    return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * 4096 / 2**20
big = bytearray(16 * 2**20); del big
blocks = [bytearray(2**20) for _ in range(96)]
keep = bytearray(2**20)
del blocks
before = rss()
released = give_back()
print(before, rss(), released)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_a_trim_returns_freed_heap_to_the_os() -> None:
    assert heap.malloc_trim() is not None
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, root], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after, released = float(out[0]), float(out[1]), out[2]
    assert released == "True"
    assert before - after > 64, (before, after)


def _cache(tmp_path: Path, index: FaissIndex) -> SemanticCache:
    store = DiskCacheStore(tmp_path / "store", 2**30)
    return SemanticCache(store, index, FakeClock(), AcceptConfig())


async def test_a_rebuild_at_start_is_followed_by_a_trim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def trim() -> bool:
        calls.append("trim")
        return True

    monkeypatch.setattr(index_upkeep, "give_back", trim)
    cache = _cache(tmp_path, FaissIndex(8, background=False))
    await index_upkeep.rebuild_index(cache)
    assert cache.ready and calls == ["trim"]


def test_an_index_build_is_followed_by_a_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def trim() -> bool:
        calls.append("trim")
        return True

    monkeypatch.setattr(faiss_index, "give_back", trim)
    index = FaissIndex(8, ivf_min=64, background=False)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((100, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.add_many("s", [f"e{i}" for i in range(100)], vectors)
    assert index.maintain() == 1  # promoted to IVF
    assert index.stats()["s"].kind == "ivf" and calls == ["trim"]
    assert index.maintain() == 0 and calls == ["trim"]  # nothing built: no trim
