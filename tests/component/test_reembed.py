"""`reembed`: a data dir's stored prompts embedded again by another model, its record moved
to that model, and an interrupted run refused at start until it is run again."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from cache_service.backends.jsonfile import JsonFile
from cache_service.backends.snapshots import SNAPSHOT_DIR
from cache_service.backends.store import DiskCacheStore
from cache_service.model_identity import RECORD, ModelIdentity, claim_file
from cache_service.preflight import StartupError
from cache_service.protocols import Vector
from cache_service.reembed import BATCH, reembed
from cache_service.settings import Settings
from tests.component.test_store_index import make_entry
from tests.fakes import HashingEmbedder

OLD = ModelIdentity("all-MiniLM-L6-v2", "float32", 384)
NEW = ModelIdentity("all-MiniLM-L6-v2", "int8", 384)


class Shifted(HashingEmbedder):
    """Another model: the same words, every vector rolled by one dimension."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.fail_after = fail_after

    def embed(self, texts: Sequence[str]) -> Vector:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("killed")
        return np.roll(super().embed(texts), 1, axis=1)


MADE = time.time() - 3000
"""When the entries were stored, on the wall clock `reembed` reads: 600 s of their hour left."""


def _data_dir(tmp_path: Path, n: int) -> Settings:
    settings = Settings(data_dir=tmp_path / "d")
    claim_file(JsonFile(settings.data_dir / RECORD), OLD)
    store = DiskCacheStore(settings.store_dir)
    for i in range(n):
        prompt = f"question {i} about passwords"
        entry = make_entry(f"e{i}", f"k{i}", prompt=prompt, created=MADE, expires=MADE + 3600)
        if i % 10 == 0:  # matched exactly only: no vector
            entry = dataclasses.replace(entry, embedding=None)
        store.put(entry)
    store.close()
    (settings.data_dir / SNAPSHOT_DIR).mkdir()
    (settings.data_dir / SNAPSHOT_DIR / "vectors.npy").write_bytes(b"old vectors")
    return settings


def test_every_vector_is_made_again_by_the_new_model_and_the_record_follows(
    tmp_path: Path,
) -> None:
    n = BATCH * 2 + 5
    settings = _data_dir(tmp_path, n)
    seen: list[tuple[int, int]] = []
    done = reembed(settings, Shifted(), NEW, progress=lambda a, b: seen.append((a, b)))
    exact_only = len(range(0, n, 10))
    assert (done.entries, done.exact_only) == (n - exact_only, exact_only)
    assert seen[-1] == (n, n)
    store = DiskCacheStore(settings.store_dir)
    try:
        for i in range(n):
            entry = store.get(f"e{i}")
            assert entry is not None and entry.prompt == f"question {i} about passwords"
            assert entry.body == make_entry().body  # the answer as it was
            if i % 10 == 0:
                assert entry.embedding is None
            else:
                assert entry.embedding is not None
                want = Shifted().embed([entry.prompt])[0]
                assert np.allclose(entry.embedding, want, atol=1e-3)  # stored as float16
            assert store.get_by_exact_key(f"k{i}") is not None
        # Rewritten, an entry's rows keep what was left of its life, not a new hour (the
        # fixture stored them all as new; the exact-only ones are not rewritten).
        for key in ("e:e1", "x:k1"):
            (expire_time,) = store._cache._sql(
                "SELECT expire_time FROM Cache WHERE key = ?", (key,)
            ).fetchone()
            assert expire_time == pytest.approx(MADE + 3600, abs=30)
    finally:
        store.close()
    assert not (settings.data_dir / SNAPSHOT_DIR).exists()  # its vectors were the old model's
    record = JsonFile(settings.data_dir / RECORD)
    assert ModelIdentity.parse(record.load()) == NEW and "reembedding" not in record.load()
    claim_file(record, NEW)  # a start with the new model


def test_an_interrupted_run_is_refused_at_start_and_finished_by_running_it_again(
    tmp_path: Path,
) -> None:
    settings = _data_dir(tmp_path, BATCH * 3)
    with pytest.raises(RuntimeError, match="killed"):
        reembed(settings, Shifted(fail_after=1), NEW)
    record = JsonFile(settings.data_dir / RECORD)
    for model in (OLD, NEW):  # vectors of both: neither model may serve them
        with pytest.raises(StartupError, match="run `python -m cache_service reembed` again"):
            claim_file(record, model)
    done = reembed(settings, Shifted(), NEW)
    assert done.entries == BATCH * 3 - len(range(0, BATCH * 3, 10))
    claim_file(record, NEW)
