"""The two storage backends on their own: DiskCacheStore on tmp_path and FaissIndex."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.faiss_scope import FLAT_ROUNDING, FLAT_SCORE_ERROR, flat_vectors
from cache_service.backends.store import DiskCacheStore
from cache_service.protocols import Entry, Vector, answer_json
from tests.fakes import HashingEmbedder

DIM = HashingEmbedder.dim
T0 = 1_795_000_000.0


def vec(*values: float) -> Vector:
    """A unit vector in DIM dimensions whose first components are `values`."""
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return (v / np.linalg.norm(v)).astype(np.float32)


def make_entry(
    entry_id: str = "e1",
    exact_key: str = "k1",
    *,
    embedding: Vector | None = None,
    expires: float | None = T0 + 3600,
    **kw: Any,
) -> Entry:
    fields: dict[str, Any] = {
        "scope": "scope-a",
        "namespace": "ns",
        "model": "gpt-4o-mini",
        "prompt": "How do I reset my password?",
        "response": {"choices": [{"message": {"content": "Use the reset link ☃"}}]},
        "created": T0,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "meta": {"api": "openai", "headers": {"x-a": "1"}, "tags": [1, 2.5, None]},
    }
    fields.update(kw)
    if embedding is None:
        embedding = HashingEmbedder().embed([fields["prompt"]])[0]
    fields["body"] = answer_json(fields.pop("response"))
    return Entry(
        id=entry_id,
        exact_key=exact_key,
        embedding=embedding,
        expires=expires,
        **fields,
    )


def assert_same_entry(got: Entry | None, want: Entry) -> None:
    assert got is not None
    for name in (
        "id",
        "scope",
        "exact_key",
        "namespace",
        "model",
        "prompt",
        "response",
        "created",
        "expires",
        "prompt_tokens",
        "completion_tokens",
        "meta",
    ):
        assert getattr(got, name) == getattr(want, name), name
    if want.embedding is None:
        assert got.embedding is None
    else:
        assert got.embedding is not None
        assert got.embedding.dtype == np.float32
        assert got.embedding.shape == want.embedding.shape
        assert got.embedding.tobytes() == want.embedding.astype(np.float32).tobytes()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DiskCacheStore]:
    s = DiskCacheStore(tmp_path / "entries")
    yield s
    s.close()


# ------------------------------------------------------------------ DiskCacheStore


def test_store_round_trips_an_entry_exactly(store: DiskCacheStore) -> None:
    # Values with awkward float32 bit patterns: must come back bit for bit.
    emb = np.array([1e-38, -0.0, 3.4e38, 1 / 3] + [0.0] * (DIM - 4), dtype=np.float32)
    entry = make_entry(embedding=emb)
    store.put(entry)
    got = store.get("e1")
    assert_same_entry(got, entry)
    assert got is not None
    assert got.embedding is not None
    got.embedding[0] = 42.0
    # The returned array is the caller's own copy, writable, not a view of stored bytes.
    assert_same_entry(store.get("e1"), entry)


def test_store_round_trips_entry_without_embedding_or_expiry(store: DiskCacheStore) -> None:
    entry = make_entry(expires=None)
    entry.embedding = None
    entry.meta = {}
    store.put(entry)
    assert_same_entry(store.get("e1"), entry)


def test_get_by_exact_key(store: DiskCacheStore) -> None:
    a = make_entry("a", "key-a")
    b = make_entry("b", "key-b", prompt="Another question")
    store.put(a)
    store.put(b)
    assert_same_entry(store.get_by_exact_key("key-a"), a)
    assert_same_entry(store.get_by_exact_key("key-b"), b)
    assert store.get_by_exact_key("key-c") is None
    assert store.get("missing") is None


def test_reput_of_exact_key_replaces_the_old_entry(store: DiskCacheStore) -> None:
    assert store.put(make_entry("old", "k")) is None
    assert store.put(make_entry("new", "k")) == "old"
    got = store.get_by_exact_key("k")
    assert got is not None
    assert got.id == "new"
    assert store.get("old") is None
    assert len(store) == 1


def test_delete(store: DiskCacheStore) -> None:
    a = make_entry("a", "key-a")
    store.put(a)
    store.put(make_entry("b", "key-b"))
    deleted = store.delete("a")
    assert_same_entry(deleted, a)
    assert store.get("a") is None
    assert store.get_by_exact_key("key-a") is None
    assert "a" not in store
    assert store.delete("a") is None
    assert store.get("b") is not None
    assert len(store) == 1


def test_len_contains_and_iter(store: DiskCacheStore) -> None:
    assert len(store) == 0
    assert "e1" not in store
    ids = {"e1", "e2", "e3"}
    for i, entry_id in enumerate(sorted(ids)):
        store.put(make_entry(entry_id, f"k{i}"))
    assert len(store) == 3  # exact-key records are not counted as entries
    assert all(i in store for i in ids)
    assert "e4" not in store
    assert {e.id for e in store.iter_entries()} == ids


def test_iter_entries_reads_in_stored_order_a_chunk_at_a_time(store: DiskCacheStore) -> None:
    # Ids that sort against the order they were stored: the scan follows the rows.
    ids = [f"e{9 - i}" for i in range(7)]
    for i, entry_id in enumerate(ids):
        store.put(make_entry(entry_id, f"k{i}"))
    store.put(make_entry("again", "k0"))  # replaces e9 under its exact key
    # A record too large for SQLite's row lives in a file of its own: read from there.
    big = make_entry("big", "k-big", response={"choices": [{"message": {"content": "x" * 99_999}}]})
    store.put(big)
    store.put(make_entry("brief", "k-brief", expires=T0 + 0.001))  # lives 1 ms
    time.sleep(0.01)
    assert [e.id for e in store.iter_entries(chunk=2)] == [*ids[1:], "again", "big"]
    assert_same_entry(next(e for e in store.iter_entries(chunk=3) if e.id == "big"), big)

    scan = store.iter_entries(chunk=2)
    assert next(scan).id == "e8"
    store.delete("e5")  # in a chunk not read yet
    assert [e.id for e in scan] == ["e7", "e6", "e4", "e3", "again", "big"]


def test_reopened_store_still_has_the_entry(tmp_path: Path) -> None:
    entry = make_entry()
    first = DiskCacheStore(tmp_path / "entries")
    first.put(entry)
    first.close()
    second = DiskCacheStore(tmp_path / "entries")
    try:
        assert_same_entry(second.get("e1"), entry)
        assert_same_entry(second.get_by_exact_key("k1"), entry)
        assert len(second) == 1
        assert second.volume() > 0
    finally:
        second.close()


# ------------------------------------------------------------------ FaissIndex


def test_search_orders_by_similarity() -> None:
    index = FaissIndex(DIM)
    q = vec(1, 0, 0)
    index.add("s", "far", vec(0, 1, 0))  # cos 0
    index.add("s", "near", vec(1, 0.2, 0))  # cos ≈ 0.98
    index.add("s", "mid", vec(1, 1, 0))  # cos ≈ 0.707
    index.add("s", "same", vec(1, 0, 0))  # cos 1
    hits = index.search("s", q, 3)
    assert [h.entry_id for h in hits] == ["same", "near", "mid"]
    assert hits[0].similarity == pytest.approx(1.0, abs=FLAT_SCORE_ERROR)
    assert hits[1].similarity == pytest.approx(1 / np.sqrt(1.04), abs=FLAT_SCORE_ERROR)
    assert hits[2].similarity == pytest.approx(1 / np.sqrt(2), abs=FLAT_SCORE_ERROR)
    assert all(isinstance(h.similarity, float) for h in hits)


def test_a_flat_scope_keeps_float16_vectors_and_scores_within_its_bound() -> None:
    # Half of float32's memory: a multi-tenant cache keeps most entries in scopes too small
    # ever to be promoted, and at 1.5 KB a vector those were past 1 KB an entry.
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((500, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(DIM, background=False)
    index.add_many("s", [f"e{i}" for i in range(len(vectors))], vectors)
    flat = faiss.downcast_index(index._scopes["s"].index.index)
    assert isinstance(flat, faiss.IndexFlatCodes)
    assert flat.code_size == 2 * DIM
    assert flat.codes.size() == 2 * DIM * len(vectors)
    # Concentrated vectors round worst: a few large components each off by up to 2^-11.
    queries = np.vstack([vectors[:5], rng.standard_normal((5, DIM)), np.eye(DIM)[:5] + 0.1])
    for q in queries.astype(np.float32):
        q /= np.linalg.norm(q)
        exact = vectors @ q
        hits = index.search("s", q, 10)
        assert [h.entry_id for h in hits][:1] == [f"e{int(np.argmax(exact))}"]
        for h in hits:
            assert abs(h.similarity - exact[int(h.entry_id[1:])]) <= FLAT_SCORE_ERROR


def test_a_flat_scopes_vectors_are_read_back_by_label_after_removals_shift_them() -> None:
    # What a promotion reads: the flat index keeps no map from label to position, and a
    # removal moves the vectors behind it down.
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(DIM, background=False)
    ids = [f"e{i}" for i in range(len(vectors))]
    index.add_many("s", ids, vectors)
    index.remove("s", ids[10:200:3])
    scope = index._scopes["s"]
    kept = [i for i in rng.permutation(len(ids)).tolist() if not (10 <= i < 200 and i % 3 == 1)]
    labels = index._ids.rows([ids[i] for i in kept], scope.no)
    assert (labels >= 0).all()
    read = flat_vectors(scope.index, labels)
    assert read.dtype == np.float32
    np.testing.assert_allclose(read, vectors[kept], atol=FLAT_ROUNDING)
    gone = index._ids.rows([ids[10]], scope.no)
    assert gone[0] == -1
    with pytest.raises(KeyError):
        flat_vectors(scope.index, np.array([labels.max() + 5], dtype=np.int64))


def test_k_larger_than_scope_returns_all() -> None:
    index = FaissIndex(DIM)
    index.add("s", "a", vec(1, 0))
    index.add("s", "b", vec(0, 1))
    index.add("other", "c", vec(1, 0))
    hits = index.search("s", vec(1, 0), 50)
    assert [h.entry_id for h in hits] == ["a", "b"]


def test_scopes_are_isolated() -> None:
    index = FaissIndex(DIM)
    index.add("s1", "a", vec(1, 0))
    assert index.search("s2", vec(1, 0), 4) == []
    index.add("s2", "b", vec(1, 0))
    assert [h.entry_id for h in index.search("s2", vec(1, 0), 4)] == ["b"]
    assert [h.entry_id for h in index.search("s1", vec(1, 0), 4)] == ["a"]


def test_readding_an_id_is_idempotent() -> None:
    index = FaissIndex(DIM)
    index.add("s", "a", vec(1, 0))
    index.add("s", "a", vec(1, 0))
    index.add("s", "a", vec(0, 1))
    assert len(index) == 1
    hits = index.search("s", vec(1, 0), 4)
    assert [h.entry_id for h in hits] == ["a"]
    assert hits[0].similarity == pytest.approx(1.0, abs=FLAT_SCORE_ERROR)  # first vector kept


def test_remove() -> None:
    index = FaissIndex(DIM)
    index.add("s", "a", vec(1, 0))
    index.add("s", "b", vec(1, 0.1))
    index.add("s", "c", vec(0, 1))
    index.remove("s", ["a", "not-there"])
    assert len(index) == 2
    assert [h.entry_id for h in index.search("s", vec(1, 0), 4)] == ["b", "c"]
    index.remove("no-such-scope", ["b"])  # harmless
    assert len(index) == 2


def test_removed_id_can_be_added_again() -> None:
    index = FaissIndex(DIM)
    index.add("s", "a", vec(1, 0))
    index.add("s", "keep", vec(0, 1))
    index.remove("s", ["a"])
    index.add("s", "a", vec(1, 0))
    assert len(index) == 2
    assert index.search("s", vec(1, 0), 1)[0].entry_id == "a"


def test_scope_is_dropped_when_empty() -> None:
    index = FaissIndex(DIM)
    index.add("s1", "a", vec(1, 0))
    index.add("s2", "b", vec(1, 0))
    assert index.scopes() == 2
    index.remove("s1", ["a"])
    assert index.scopes() == 1
    assert index.search("s1", vec(1, 0), 4) == []
    index.remove("s2", ["b"])
    assert index.scopes() == 0
    assert len(index) == 0


def test_len_counts_all_scopes_and_clear_empties() -> None:
    index = FaissIndex(DIM)
    assert len(index) == 0
    for i in range(5):
        index.add(f"s{i % 2}", f"id{i}", vec(1, i))
    assert len(index) == 5
    assert index.scopes() == 2
    index.clear()
    assert len(index) == 0
    assert index.search("s0", vec(1, 0), 4) == []


def test_search_empty_index() -> None:
    assert FaissIndex(DIM).search("s", vec(1, 0), 4) == []


def test_read_write_lock_admits_readers_together_and_writers_alone() -> None:
    import threading

    from cache_service.backends.rwlock import ReadWriteLock

    lock = ReadWriteLock()
    inside = threading.Barrier(2, timeout=2)

    def reader() -> None:
        with lock.read():
            inside.wait()  # both readers must be inside at once, or this times out

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not inside.broken

    order: list[str] = []
    with lock.read():

        def write() -> None:
            with lock.write():
                order.append("write")

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(0.2)
        assert order == []  # the writer waits for the reader
        order.append("read done")
    writer.join(2)
    assert order == ["read done", "write"]


def test_searches_go_on_beside_a_long_read_while_a_writer_waits() -> None:
    # A snapshot's copy of a large scope (~1.1 s at 1M) must not stall every search behind a
    # store that arrives meanwhile; behind an ordinary read, a waiting writer still goes first.
    import threading
    import time

    from cache_service.backends.rwlock import ReadWriteLock

    lock = ReadWriteLock()
    events: list[str] = []

    def write() -> None:
        with lock.write():
            events.append("write")

    def read() -> None:
        with lock.read():
            events.append("read")

    def writer_waiting() -> threading.Thread:
        writer = threading.Thread(target=write)
        writer.start()
        deadline = time.monotonic() + 2
        while not lock._writers_waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        assert lock._writers_waiting == 1
        return writer

    with lock.read(long=True):
        writer = writer_waiting()
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(2)
        assert events == ["read"]  # went in beside the long read
    writer.join(2)
    assert events == ["read", "write"]

    events.clear()
    with lock.read():
        writer = writer_waiting()
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(0.2)
        assert events == []  # waits behind the waiting writer
    writer.join(2)
    reader.join(2)
    assert events == ["write", "read"]


def test_entry_ids_lists_every_entry_without_exact_keys(store: DiskCacheStore) -> None:
    assert store.entry_ids() == []
    store.put(make_entry("e1", "k1"))
    store.put(make_entry("e2", "k2"))
    store.put(make_entry("e3", "k2"))  # replaces e2 under the same exact key
    assert sorted(store.entry_ids()) == ["e1", "e3"]
    store.delete("e1")
    assert store.entry_ids() == ["e3"]


def test_export_scope_hands_back_ids_and_vectors_for_add_many() -> None:
    index = FaissIndex(DIM)
    assert index.export_scope("nowhere")[0] == []
    assert index.export_scope("nowhere")[1].shape == (0, DIM)
    vectors = {f"e{i}": vec(1.0, float(i)) for i in range(5)}
    for entry_id, v in vectors.items():
        index.add("a", entry_id, v)
    index.add("b", "other", vec(0.0, 1.0))
    index.remove("a", ["e2"])
    ids, got = index.export_scope("a")
    assert sorted(ids) == ["e0", "e1", "e3", "e4"]
    assert got.dtype == np.float16 and got.shape == (4, DIM)  # as the flat scope keeps them
    for entry_id, row in zip(ids, got, strict=True):
        np.testing.assert_allclose(row, vectors[entry_id], rtol=FLAT_ROUNDING, atol=1e-7)
    copy = FaissIndex(DIM)
    copy.add_many("a", ids, got)
    probe = vec(1.0, 3.0)
    assert copy.search("a", probe, 4) == index.search("a", probe, 4)


def test_add_many_adds_in_bulk_and_skips_known_or_repeated_ids() -> None:
    index = FaissIndex(DIM)
    vs = np.stack([vec(1.0, float(i)) for i in range(4)])
    index.add_many("a", ["e0", "e1"], vs[:2])
    assert len(index) == 2
    index.add_many("a", ["e1", "e2", "e2"], vs[1:4])  # e1 known, e2 twice: first wins
    assert len(index) == 3
    ids, got = index.export_scope("a")
    assert sorted(ids) == ["e0", "e1", "e2"]
    np.testing.assert_allclose(got[ids.index("e2")], vs[2], rtol=FLAT_ROUNDING, atol=1e-7)
    assert index.search("a", vs[0], 1)[0].entry_id == "e0"
    index.remove("a", ["e0"])
    assert index.search("a", vs[0], 1)[0].entry_id != "e0"
    with pytest.raises(ValueError):
        index.add_many("a", ["x"], vs[:2])
