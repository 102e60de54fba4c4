"""SemanticCache with the real FaissIndex and DiskCacheStore on tmp_path; the hashing
embedder and a fake clock stand in for the model and time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.faiss_scope import FLAT_SCORE_ERROR
from cache_service.backends.store import DiskCacheStore
from cache_service.cache import semantic as cache_module
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.semantic import SemanticCache
from cache_service.protocols import Entry, SearchHit, Vector, Vectors
from tests.fakes import FakeClock, HashingEmbedder

Q = "How do I reset my password?"
SAME_WORDS = "how do I reset my password"  # same words: hashing embedder scores 1.0
THRESHOLD = 0.9
TTL = 600.0


class Env:
    def __init__(self, tmp_path: Path, keep_hot: bool = False) -> None:
        self.dir = tmp_path / "entries"
        self.clock = FakeClock()
        self.embedder = HashingEmbedder()
        self.store = DiskCacheStore(self.dir)
        self.index = FaissIndex(HashingEmbedder.dim)
        self.cache = SemanticCache(
            self.store,
            self.index,
            self.clock,
            AcceptConfig(threshold=THRESHOLD),
            search_k=4,
            keep_hot=keep_hot,
        )

    def vec(self, text: str) -> Vector:
        row: Vector = self.embedder.embed([text])[0]
        return row

    def entry(
        self,
        prompt: str = Q,
        *,
        scope: str = "scope-a",
        exact_key: str | None = None,
        namespace: str = "ns-a",
        model: str = "gpt-4o-mini",
        ttl_s: float = TTL,
        embed: bool = True,
        answer: str = "Use the reset link.",
    ) -> Entry:
        return self.cache.new_entry(
            scope=scope,
            exact_key=exact_key or f"{scope}|{prompt}",
            namespace=namespace,
            model=model,
            prompt=prompt,
            embedding=self.vec(prompt) if embed else None,
            response={"choices": [{"message": {"content": answer}}]},
            ttl_s=ttl_s,
            prompt_tokens=7,
            completion_tokens=5,
            meta={"api": "openai"},
        )

    def put(self, prompt: str = Q, **kw: Any) -> Entry:
        e = self.entry(prompt, **kw)
        self.cache.put(e)
        return e

    def search(self, prompt: str, scope: str = "scope-a", **kw: Any) -> Any:
        return self.cache.search(scope, self.vec(prompt), prompt, **kw)


@pytest.fixture(params=[False, True], ids=["store", "hot"])
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    """Every test twice: exact reads from the store, and with the latest kept in memory."""
    e = Env(tmp_path, keep_hot=request.param)
    yield e
    e.store.close()


# ------------------------------------------------------------------ writes and reads


def test_new_entry_fields(env: Env) -> None:
    e = env.entry()
    assert e.created == env.clock.now()
    assert e.expires == env.clock.now() + TTL
    assert e.scope == "scope-a"
    assert e.prompt_tokens == 7
    assert e.completion_tokens == 5
    assert e.id != env.entry().id  # fresh id each time


def test_put_then_get_exact(env: Env) -> None:
    e = env.put()
    got = env.cache.get_exact(e.exact_key)
    assert got is not None
    assert got.id == e.id
    assert got.response == e.response
    assert env.cache.get_exact("scope-a|something else") is None


def test_exact_reads_stay_right_across_every_kind_of_removal(env: Env) -> None:
    def exact(key: str) -> str | None:
        # Twice: the second read may come from memory, and must agree with the first.
        first, second = env.cache.get_exact(key), env.cache.get_exact(key)
        assert (first and first.id) == (second and second.id)
        return second.id if second is not None else None

    a = env.put(Q)
    assert exact(a.exact_key) == a.id
    env.cache.delete(a.id)
    assert exact(a.exact_key) is None
    b = env.put(Q)
    assert exact(b.exact_key) == b.id
    c = env.put(Q)  # the same exact key: replaces b
    assert exact(c.exact_key) == c.id
    d = env.put("what is a token bucket", namespace="ns-b")
    assert exact(d.exact_key) == d.id
    assert env.cache.delete_where(namespace="ns-b") == 1
    assert exact(d.exact_key) is None
    env.clock.advance(TTL)
    assert exact(c.exact_key) is None  # expired


def counted(monkeypatch: pytest.MonkeyPatch, store: Any, method: str) -> list[str]:
    """The arguments of every call of the store's `method` from here on, in order."""
    reads: list[str] = []
    read = getattr(store, method)

    def counting(key: str) -> Any:
        reads.append(key)
        return read(key)

    monkeypatch.setattr(store, method, counting)
    return reads


def test_a_repeated_exact_read_comes_from_memory_until_its_entry_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path, keep_hot=True)
    reads = counted(monkeypatch, env.store, "get_by_exact_key")
    try:
        a = env.put(Q)
        for _ in range(3):
            assert (got := env.cache.get_exact(a.exact_key)) is not None and got.id == a.id
        assert len(reads) == 1
        # Evicted under the store's size limit: a valid answer, still served from memory...
        env.store.delete(a.id)
        assert env.cache.get_exact(a.exact_key) is not None
        # ...but never once invalidated.
        assert env.cache.delete_where(namespace=a.namespace) == 0  # the store has none
        assert env.cache.get_exact(a.exact_key) is None
        # And the sweep, finding an evicted one gone, forgets it too.
        b = env.put("what is a token bucket")
        assert env.cache.get_exact(b.exact_key) is not None
        env.store.delete(b.id)
        assert env.cache.sweep().evicted == 2  # a and b
        assert env.cache.get_exact(b.exact_key) is None
    finally:
        env.store.close()


def test_an_entry_deleted_while_it_was_read_is_not_kept_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path, keep_hot=True)
    try:
        a = env.put(Q)
        read = env.store.get_by_exact_key

        def racing(key: str) -> Entry | None:
            got = read(key)
            env.cache.delete(a.id)  # another thread, between the read and keeping it
            return got

        monkeypatch.setattr(env.store, "get_by_exact_key", racing)
        assert env.cache.get_exact(a.exact_key) is not None  # read before the delete
        monkeypatch.setattr(env.store, "get_by_exact_key", read)
        assert env.cache.get_exact(a.exact_key) is None
    finally:
        env.store.close()


def test_a_semantic_hit_is_then_read_from_memory_until_its_entry_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path, keep_hot=True)
    reads = counted(monkeypatch, env.store, "get")
    try:
        a = env.put(Q)
        env.put("what is a token bucket")
        for _ in range(3):
            assert (hit := env.search(SAME_WORDS).entry) is not None and hit.id == a.id
        assert reads == [a.id]  # the candidates it served come from memory after that
        assert env.cache.delete_where(namespace=a.namespace) == 2
        assert env.search(SAME_WORDS).entry is None
    finally:
        env.store.close()


def test_semantic_search_finds_same_words(env: Env) -> None:
    e = env.put()
    lookup = env.search(SAME_WORDS)
    assert lookup.entry is not None
    assert lookup.entry.id == e.id
    assert lookup.match == "semantic"
    assert lookup.reason == "ok"
    assert lookup.similarity == pytest.approx(1.0, abs=1e-5)


def test_entry_without_embedding_is_exact_only(env: Env) -> None:
    e = env.put(embed=False)
    assert len(env.index) == 0
    assert env.cache.get_exact(e.exact_key) is not None
    assert env.search(Q).entry is None


def test_scope_isolation(env: Env) -> None:
    env.put(scope="scope-a")
    other = env.search(Q, scope="scope-b")  # identical vector, other scope
    assert other.entry is None
    assert other.reason == "no_candidates"
    assert other.best_rejected is None
    own = env.search(Q, scope="scope-a")
    assert own.entry is not None


def test_scope_isolation_with_entries_in_both(env: Env) -> None:
    a = env.put(scope="scope-a", answer="A")
    b = env.put(scope="scope-b", answer="B")
    assert env.search(Q, scope="scope-a").entry.id == a.id
    assert env.search(Q, scope="scope-b").entry.id == b.id


def test_best_candidate_of_several_wins(env: Env) -> None:
    env.put("reset password for my email account")
    best = env.put(Q)
    lookup = env.search(SAME_WORDS)
    assert lookup.entry is not None
    assert lookup.entry.id == best.id


# ------------------------------------------------------------------ rejected candidates


def test_below_threshold_sets_best_rejected(env: Env) -> None:
    env.put("book 3 tickets to Paris")
    query = "book 4 tickets to Paris"
    expected = float(env.vec(query) @ env.vec("book 3 tickets to Paris"))
    assert 0.5 < expected < THRESHOLD  # 4 of 5 words shared
    lookup = env.search(query)
    assert lookup.entry is None
    assert lookup.match is None
    assert lookup.reason == "below_threshold"
    assert lookup.best_rejected == pytest.approx(expected, abs=FLAT_SCORE_ERROR)


def test_guard_refusal_reason_and_best_rejected(env: Env) -> None:
    # Close enough for a lower per-request threshold, but the numbers differ.
    env.put("book 3 tickets to Paris")
    query = "book 4 tickets to Paris"
    expected = float(env.vec(query) @ env.vec("book 3 tickets to Paris"))
    lookup = env.search(query, threshold=0.5)
    assert lookup.entry is None
    assert lookup.reason == "numbers_differ"
    assert lookup.best_rejected == pytest.approx(expected, abs=FLAT_SCORE_ERROR)


def test_per_request_threshold_can_be_stricter(env: Env) -> None:
    env.put("How do I reset my password on the website?")
    query = "How do I reset my password on the app?"
    sim = float(env.vec(query) @ env.vec("How do I reset my password on the website?"))
    assert sim < 1.0
    strict = env.search(query, threshold=min(1.0, sim + 0.01))
    assert strict.entry is None
    assert strict.reason == "below_threshold"
    assert strict.best_rejected == pytest.approx(sim, abs=FLAT_SCORE_ERROR)


def test_empty_scope_is_no_candidates(env: Env) -> None:
    lookup = env.search(Q)
    assert lookup.entry is None
    assert lookup.reason == "no_candidates"


# ------------------------------------------------------------------ expiry


def test_expired_entry_never_served_before_any_sweep(env: Env) -> None:
    e = env.put(ttl_s=100)
    env.clock.advance(99)
    assert env.cache.get_exact(e.exact_key) is not None
    assert env.search(SAME_WORDS).entry is not None
    env.clock.advance(1)  # exactly at expiry: expired
    assert env.cache.get_exact(e.exact_key) is None
    lookup = env.search(SAME_WORDS)
    assert lookup.entry is None
    # The stale vector is dropped from the index as it is found.
    assert len(env.index) == 0


def test_sweep_removes_expired_from_store_and_index(env: Env) -> None:
    short = env.put("what is a token bucket", ttl_s=10)
    long = env.put(Q, ttl_s=1000)
    no_vec = env.put("exact only question", ttl_s=10, embed=False)
    assert (len(env.store), len(env.index)) == (3, 2)
    env.clock.advance(5)
    assert env.cache.sweep() == (0, 0)
    assert (len(env.store), len(env.index)) == (3, 2)
    env.clock.advance(10)
    assert env.cache.sweep() == (2, 0)
    assert short.id not in env.store
    assert no_vec.id not in env.store
    assert long.id in env.store
    assert len(env.store) == 1
    assert len(env.index) == 1
    assert env.index.search("scope-a", env.vec("what is a token bucket"), 4)[0].entry_id == long.id


def test_sweep_forgets_vectors_of_entries_the_store_lost(env: Env) -> None:
    # Stands in for diskcache's size-limit eviction: gone from the store, index unaware.
    a = env.put(Q)
    b = env.put("what is a token bucket")
    env.store.delete(a.id)
    assert len(env.index) == 2
    assert env.cache.sweep() == (0, 1)
    assert len(env.index) == 1
    assert env.index.search("scope-a", env.vec(Q), 4)[0].entry_id == b.id


def test_rebuild_after_restart_restores_index(env: Env, tmp_path: Path) -> None:
    a = env.put(Q)
    b = env.put("what is a token bucket", scope="scope-b")
    c = env.put("exact only", embed=False)
    env.store.close()

    store = DiskCacheStore(env.dir)
    try:
        index = FaissIndex(HashingEmbedder.dim)
        cache = SemanticCache(store, index, env.clock, AcceptConfig(threshold=THRESHOLD))
        assert cache.ready is False
        assert cache.rebuild() == 3
        assert cache.ready is True
        assert len(index) == 2
        hit = cache.search("scope-a", env.vec(SAME_WORDS), SAME_WORDS)
        assert hit.entry is not None
        assert hit.entry.id == a.id
        hit_b = cache.search("scope-b", env.vec("what is a token bucket"), "what is a token bucket")
        assert hit_b.entry is not None
        assert hit_b.entry.id == b.id
        exact = cache.get_exact(c.exact_key)
        assert exact is not None
        assert exact.id == c.id
        # The rebuilt cache tracks entries for the sweep, too.
        env.clock.advance(TTL)
        assert cache.sweep().expired == 3
        assert len(store) == 0
        assert len(index) == 0
    finally:
        store.close()
    env.store = DiskCacheStore(env.dir)  # for the fixture's close


def test_rebuild_skips_and_deletes_expired(env: Env) -> None:
    old = env.put("what is a token bucket", ttl_s=10)
    fresh = env.put(Q, ttl_s=1000)
    env.clock.advance(20)
    index = FaissIndex(HashingEmbedder.dim)
    cache = SemanticCache(env.store, index, env.clock, AcceptConfig(threshold=THRESHOLD))
    assert cache.rebuild() == 1
    assert len(index) == 1
    assert old.id not in env.store
    assert fresh.id in env.store


class _Recording(FaissIndex):
    """The index's calls, by kind."""

    def __init__(self) -> None:
        super().__init__(HashingEmbedder.dim)
        self.adds = 0
        self.bulk: list[tuple[str, int]] = []

    def add(self, scope: str, entry_id: str, vector: Vector) -> None:
        self.adds += 1
        super().add(scope, entry_id, vector)

    def add_many(self, scope: str, entry_ids: Sequence[str], vectors: Vectors) -> None:
        self.bulk.append((scope, len(entry_ids)))
        super().add_many(scope, entry_ids, vectors)


def test_rebuild_adds_vectors_in_bulk_in_bounded_chunks(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = [f"question number {i} about topic {i}" for i in range(7)]
    live = [env.put(p, scope=f"scope-{i % 2}") for i, p in enumerate(prompts)]
    exact_only = env.put("exact only", embed=False)
    old = env.put("what is a token bucket", ttl_s=10)
    env.clock.advance(20)

    monkeypatch.setattr(cache_module, "REBUILD_CHUNK", 3)
    index = _Recording()
    cache = SemanticCache(env.store, index, env.clock, AcceptConfig(threshold=THRESHOLD))
    assert cache.rebuild() == len(live) + 1
    assert index.adds == 0
    assert sum(n for _, n in index.bulk) == len(live)
    assert all(0 < n <= 3 for _, n in index.bulk)
    assert len(index.bulk) < len(live)
    assert len(index) == len(live)
    for e in live:
        hit = cache.search(e.scope, env.vec(e.prompt), e.prompt)
        assert hit.entry is not None
        assert hit.entry.id == e.id
    assert old.id not in env.store
    exact = cache.get_exact(exact_only.exact_key)
    assert exact is not None
    env.clock.advance(TTL)
    assert cache.sweep().expired == len(live) + 1


def test_rebuild_gathers_the_vectors_of_many_scopes_into_fewer_calls(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four scopes read in turn: flushing every scope each REBUILD_CHUNK vectors read would
    # add one vector a call (a call's fixed cost then dominated a rebuild of 200 scopes).
    live = [env.put(f"question {i} on topic {i}", scope=f"scope-{i % 4}") for i in range(24)]
    monkeypatch.setattr(cache_module, "REBUILD_CHUNK", 4)
    monkeypatch.setattr(cache_module, "REBUILD_HELD", 8)
    index = _Recording()
    cache = SemanticCache(env.store, index, env.clock, AcceptConfig(threshold=THRESHOLD))
    assert cache.rebuild() == len(live)
    assert sorted(n for _, n in index.bulk) == [2] * 12
    one = [env.put(f"one scope, question {i}", scope="scope-9") for i in range(10)]
    index = _Recording()
    cache = SemanticCache(env.store, index, env.clock, AcceptConfig(threshold=THRESHOLD))
    assert cache.rebuild() == len(live) + len(one)
    assert [n for scope, n in index.bulk if scope == "scope-9"] == [4, 4, 2]
    assert len(index) == len(live) + len(one)


# ------------------------------------------------------------------ replacement and deletion


def test_exact_key_reput_replaces_old_entry(env: Env) -> None:
    old = env.put(answer="old answer")
    new = env.put(answer="new answer")
    assert old.exact_key == new.exact_key
    assert old.id != new.id
    assert old.id not in env.store
    assert len(env.store) == 1
    assert len(env.index) == 1
    got = env.cache.get_exact(new.exact_key)
    assert got is not None
    assert got.response["choices"][0]["message"]["content"] == "new answer"
    hits = env.index.search("scope-a", env.vec(Q), 4)
    assert [h.entry_id for h in hits] == [new.id]
    lookup = env.search(SAME_WORDS)
    assert lookup.entry is not None
    assert lookup.entry.id == new.id
    # The replaced entry is no longer tracked: a later sweep counts only the new one.
    env.clock.advance(TTL)
    assert env.cache.sweep() == (1, 0)


def test_delete(env: Env) -> None:
    a = env.put(Q)
    b = env.put("what is a token bucket")
    deleted = env.cache.delete(a.id)
    assert deleted is not None
    assert deleted.id == a.id
    assert env.cache.get_exact(a.exact_key) is None
    assert a.id not in env.store
    assert len(env.index) == 1
    assert env.search(SAME_WORDS).entry is None
    assert env.cache.delete(a.id) is None
    assert b.id in env.store


def test_delete_where_namespace(env: Env) -> None:
    a1 = env.put(Q, namespace="a", scope="sa")
    a2 = env.put("what is a token bucket", namespace="a", scope="sa")
    b1 = env.put(Q, namespace="b", scope="sb")
    assert env.cache.delete_where(namespace="a") == 2
    assert a1.id not in env.store
    assert a2.id not in env.store
    assert b1.id in env.store
    assert len(env.index) == 1
    assert env.search(Q, scope="sa").entry is None
    assert env.search(Q, scope="sb").entry is not None


def test_delete_where_model_and_both(env: Env) -> None:
    env.put(Q, model="m1", namespace="a", scope="s1")
    env.put(Q, model="m2", namespace="a", scope="s2")
    keep = env.put(Q, model="m1", namespace="b", scope="s3")
    assert env.cache.delete_where(model="m1", namespace="a") == 1
    assert len(env.store) == 2
    assert env.cache.delete_where(model="m2") == 1
    assert env.cache.delete_where(model="m3") == 0
    assert [e.id for e in env.store.iter_entries()] == [keep.id]
    assert len(env.index) == 1


def test_vanished_store_entry_is_dropped_from_index_at_lookup(env: Env) -> None:
    gone = env.put(Q)
    env.store.delete(gone.id)  # behind the cache's back
    assert len(env.index) == 1
    lookup = env.search(SAME_WORDS)
    assert lookup.entry is None
    assert lookup.match is None
    assert len(env.index) == 0


def test_vanished_best_candidate_falls_through_to_the_next(env: Env) -> None:
    gone = env.put(Q)
    other = env.put("How do I reset my password quickly?")
    env.store.delete(gone.id)
    lookup = env.search(Q, threshold=0.5)
    assert lookup.entry is not None
    assert lookup.entry.id == other.id
    assert len(env.index) == 1


def test_a_sweep_removes_each_scopes_vectors_in_one_call(clock: FakeClock, tmp_path: Path) -> None:
    """A flat FAISS removal passes over the whole scope: one call per expired id would make
    a sweep after mass expiry at a million entries take hours."""
    calls: list[tuple[str, int]] = []

    class CountingIndex(FaissIndex):
        def remove(self, scope: str, entry_ids: Iterable[str]) -> None:
            ids = list(entry_ids)
            calls.append((scope, len(ids)))
            super().remove(scope, ids)

    store = DiskCacheStore(tmp_path / "entries")
    cache = SemanticCache(store, CountingIndex(DIM_FOR_SWEEP), clock, AcceptConfig(0.9))
    for i in range(50):
        scope = "a" if i % 2 else "b"
        cache.put(
            cache.new_entry(
                scope=scope,
                exact_key=f"k{i}",
                namespace="ns",
                model="m",
                prompt=f"p{i}",
                embedding=np.ones(DIM_FOR_SWEEP, dtype=np.float32) / np.sqrt(DIM_FOR_SWEEP),
                response={"text": "x"},
                ttl_s=10,
            )
        )
    clock.advance(11)
    assert cache.sweep().expired == 50
    assert sorted(calls) == [("a", 25), ("b", 25)]
    assert len(cache.index) == 0
    store.close()


DIM_FOR_SWEEP = 8


class _Offset(FaissIndex):
    """Scores every hit `offset` lower than the truth, as a quantised index may."""

    def __init__(self, offset: float) -> None:
        super().__init__(HashingEmbedder.dim)
        self.offset = offset

    def search(self, scope: str, vector: Vector, k: int) -> list[SearchHit]:
        return [
            SearchHit(h.entry_id, h.similarity - self.offset)
            for h in super().search(scope, vector, k)
        ]


@pytest.mark.parametrize(
    ("offset", "served"),
    [(cache_module.APPROX_MARGIN / 2, True), (cache_module.APPROX_MARGIN * 3, False)],
)
def test_a_candidate_scored_just_under_the_threshold_is_rescored_from_its_vector(
    env: Env, offset: float, served: bool
) -> None:
    stored = env.entry(Q)
    query = env.vec(SAME_WORDS)
    true_similarity = float(np.dot(query, env.vec(Q)))
    # The index scores the candidate `offset` under the truth; the threshold lies between.
    threshold = true_similarity - offset / 2
    cache = SemanticCache(env.store, _Offset(offset), env.clock, AcceptConfig(threshold=threshold))
    cache.put(stored)
    hit = cache.search("scope-a", query, SAME_WORDS)
    if served:
        assert hit.entry is not None and hit.entry.id == stored.id
        assert hit.similarity == pytest.approx(true_similarity, abs=1e-6)
    else:  # too far under to be worth a read
        assert hit.entry is None and hit.reason == "below_threshold"
        assert hit.best_rejected == pytest.approx(true_similarity - offset, abs=FLAT_SCORE_ERROR)


def test_a_candidate_scored_above_the_threshold_but_truly_below_is_refused(env: Env) -> None:
    index = _Offset(-0.05)  # scores inflated
    cache = SemanticCache(env.store, index, env.clock, AcceptConfig(threshold=0.99))
    cache.put(env.entry(Q))
    query = env.vec("how do I reset my password please")
    true_similarity = float(np.dot(query, env.vec(Q)))
    assert true_similarity < 0.99 <= true_similarity + 0.05
    hit = cache.search("scope-a", query, "how do I reset my password please")
    assert hit.entry is None and hit.reason == "below_threshold"
    assert hit.best_rejected == pytest.approx(true_similarity, abs=1e-6)
