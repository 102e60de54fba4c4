"""The EntryStore contract: what every store implementation promises, written against the
protocol alone. A new implementation is proved by adding one line to IMPLEMENTATIONS."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache_service.backends import store as store_module
from cache_service.backends.records import from_record, to_record
from cache_service.backends.redis_store import RedisEntryStore
from cache_service.backends.store import DiskCacheStore
from cache_service.pricing import Usage
from cache_service.protocols import Entry, EntryStore, answer_json

DIM = 384
T0 = 1_795_000_000.0
"""Creation time of test entries: the fake clock's, not the backend's own."""


@dataclass(frozen=True)
class StoreImpl:
    open: Callable[[Path, pytest.FixtureRequest], EntryStore]
    """Opens (or reopens) the store kept under a test's own directory, or in the fixtures
    the test's request can reach (a Redis)."""
    persistent: bool
    """Entries survive close() and a reopen on the same directory."""


def open_redis(_: Path, request: pytest.FixtureRequest) -> EntryStore:
    # Asked for here, not by the fixture's signature, so only this param needs a Redis.
    url: str = request.getfixturevalue("redis_url")
    return RedisEntryStore.from_url(url, origin="contract")


def open_disk_with_keys(d: Path, _: pytest.FixtureRequest) -> EntryStore:
    """As the sidecar runs it once started: its exact-key filter loaded."""
    store = DiskCacheStore(d / "entries")
    store.load_keys()
    return store


IMPLEMENTATIONS = [
    pytest.param(StoreImpl(lambda d, _: DiskCacheStore(d / "entries"), persistent=True), id="disk"),
    pytest.param(StoreImpl(open_disk_with_keys, persistent=True), id="disk-keys-loaded"),
    pytest.param(StoreImpl(open_redis, persistent=True), id="redis"),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> StoreImpl:
    chosen: StoreImpl = request.param
    return chosen


@pytest.fixture
def store(impl: StoreImpl, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EntryStore]:
    s = impl.open(tmp_path, request)
    yield s
    s.close()


def unit(seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def make_entry(entry_id: str = "e1", exact_key: str = "k1", **kw: Any) -> Entry:
    fields: dict[str, Any] = {
        "id": entry_id,
        "exact_key": exact_key,
        "scope": "scope-a",
        "namespace": "ns",
        "model": "gpt-4o-mini",
        "prompt": "How do I reset my password?",
        "embedding": unit(sum(map(ord, entry_id))),
        "response": {"choices": [{"message": {"content": "Use the reset link ☃"}}], "n": 1.5},
        "created": T0,
        "expires": T0 + 3600,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "cached_tokens": 8,
        "meta": {"api": "openai", "headers": {"x-a": "1"}, "tags": [1, 2.5, None, True]},
    }
    fields.update(kw)
    fields["body"] = answer_json(fields.pop("response"))
    return Entry(**fields)


def assert_same_entry(got: Entry | None, want: Entry) -> None:
    assert got is not None
    for f in dataclasses.fields(Entry):
        if f.name not in ("embedding", "_response"):
            assert getattr(got, f.name) == getattr(want, f.name), f.name
    assert got.response == want.response
    if want.embedding is None:
        assert got.embedding is None
    else:
        assert got.embedding is not None
        assert got.embedding.dtype == np.float32
        assert got.embedding.shape == want.embedding.shape
        assert got.embedding.tobytes() == want.embedding.tobytes()  # bit for bit


# ------------------------------------------------------------------ round trips


def test_put_then_get_returns_every_field_unchanged(store: EntryStore) -> None:
    # Awkward float32 bit patterns (denormal, negative zero, max, 1/3) must survive.
    emb = np.array([1e-38, -0.0, 3.4e38, 1 / 3] + [0.5] * (DIM - 4), dtype=np.float32)
    entry = make_entry(embedding=emb)
    assert store.put(entry) is None
    assert_same_entry(store.get("e1"), entry)


def test_a_record_from_before_prompt_cache_pricing_reads_as_nothing_cached() -> None:
    record = to_record(make_entry())
    del record["cached_tokens"]
    entry = from_record(record)
    assert entry.cached_tokens == 0
    assert entry.saved_usage() == Usage(12, 34)


def test_put_then_get_by_exact_key_returns_the_entry(store: EntryStore) -> None:
    a = make_entry("a", "key-a")
    b = make_entry("b", "key-b", prompt="Another question", scope="scope-b")
    assert store.put(a) is None
    assert store.put(b) is None
    assert_same_entry(store.get_by_exact_key("key-a"), a)
    assert_same_entry(store.get_by_exact_key("key-b"), b)


def test_an_entry_without_embedding_expiry_or_meta_round_trips(store: EntryStore) -> None:
    entry = make_entry(embedding=None, expires=None, meta={}, prompt_tokens=0)
    store.put(entry)
    assert_same_entry(store.get("e1"), entry)
    assert_same_entry(store.get_by_exact_key("k1"), entry)


def test_get_of_an_unknown_id_or_exact_key_returns_none(store: EntryStore) -> None:
    assert store.get("e1") is None
    assert store.get_by_exact_key("k1") is None
    store.put(make_entry())
    assert store.get("e2") is None
    assert store.get_by_exact_key("k2") is None
    assert store.get_by_exact_key("e1") is None  # ids and exact keys are separate spaces
    assert store.get("k1") is None


def test_an_answer_larger_than_a_row_round_trips(store: EntryStore) -> None:
    """Past 32 KB diskcache keeps a record in a file beside its database."""
    entry = make_entry(response={"choices": [{"message": {"content": "long " * 20_000}}]})
    store.put(entry)
    assert_same_entry(store.get("e1"), entry)
    assert_same_entry(store.get_by_exact_key("k1"), entry)


def test_the_disk_store_answers_no_exact_key_past_its_expiry(tmp_path: Path) -> None:
    """diskcache drops expired rows only on writes and sweeps: a read must not return one."""
    store = DiskCacheStore(tmp_path / "entries")
    try:
        now = time.time()
        store.put(make_entry("short", "k-short", created=now, expires=now + 0.2))
        store.put(make_entry("long", "k-long", created=now, expires=now + 3600))
        assert store.get_by_exact_key("k-short") is not None
        time.sleep(0.3)
        assert store.get_by_exact_key("k-short") is None
        assert store.get("short") is None
        assert store.get_by_exact_key("k-long") is not None
    finally:
        store.close()


def test_the_disk_store_answers_an_absent_exact_key_without_sqlite(tmp_path: Path) -> None:
    first = DiskCacheStore(tmp_path / "entries")
    first.put(make_entry("e1", "k1"))
    first.close()
    store = DiskCacheStore(tmp_path / "entries")
    try:
        assert store.load_keys() == 1  # what an earlier process stored is listed at start
        store.put(make_entry("e2", "k2"))  # and what this one stores from then on

        statements: list[str] = []
        store._cache._con.set_trace_callback(statements.append)
        assert store.get_by_exact_key("never-stored") is None
        assert statements == []  # answered without a query
        assert_same_entry(store.get_by_exact_key("k1"), make_entry("e1", "k1"))
        assert_same_entry(store.get_by_exact_key("k2"), make_entry("e2", "k2"))
        assert statements  # those did query
    finally:
        store.close()


def test_an_entry_stored_after_it_was_made_keeps_only_the_rest_of_its_life_on_disk(
    tmp_path: Path,
) -> None:
    """Replayed from the entry journal at start, or re-embedded: diskcache counts a TTL from
    its own write, so an old entry's rows must not outlive its `expires`."""
    store = DiskCacheStore(tmp_path / "entries")
    try:
        now = time.time()
        made = make_entry("old", "k-old", created=now - 3000, expires=now + 600)
        store.put(made, now=now)
        store.put(make_entry("new", "k-new", created=now, expires=now + 600))
        store.put(make_entry("gone", "k-gone", created=now - 3000, expires=now - 1), now=now)

        def expire_time(key: str) -> float:
            (row,) = store._cache._sql(
                "SELECT expire_time FROM Cache WHERE key = ?", (key,)
            ).fetchall()
            return float(row[0])

        for key in ("e:old", "x:k-old", "e:new", "x:k-new"):
            assert expire_time(key) == pytest.approx(now + 600, abs=5), key
        assert expire_time("e:gone") < now + 1  # past its life already: its rows go at once
        assert_same_entry(store.get_by_exact_key("k-old"), made)
    finally:
        store.close()


def test_the_disk_stores_sweep_forgets_the_exact_keys_of_entries_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under TTL churn the key filter would grow by every key ever stored: once it holds
    twice the store's keys, a cull lists them again."""
    monkeypatch.setattr(store_module, "RELOAD_SLACK", 4)
    store = DiskCacheStore(tmp_path / "entries")
    try:
        store.load_keys()
        for i in range(10):
            store.put(make_entry(f"e{i}", f"k{i}"))
        for i in range(7):
            store.delete(f"e{i}")
        store.cull()  # 10 keys, 3 entries: within 2 x 3 + 4
        assert len(store.keys) == 10
        store.delete("e7")
        store.cull()  # 10 keys, 2 entries: reloaded
        assert len(store.keys) == 2
        assert not store.keys.may_hold("k0") and not store.keys.may_hold("k7")
        assert_same_entry(store.get_by_exact_key("k9"), make_entry("e9", "k9"))
        store.put(make_entry("e10", "k10"))
        assert_same_entry(store.get_by_exact_key("k10"), make_entry("e10", "k10"))
    finally:
        store.close()


def test_unicode_prompts_keys_and_answers_round_trip(store: EntryStore) -> None:
    texts = [
        "",
        "naïve café — “quotes” ‘and’ dashes…",
        "日本語の質問はどうですか？",
        "emoji 👩🏽‍💻🚀 and flags 🇫🇷",
        "עברית ومرحبا mixed direction",
        "e\u0301 combining, \u200b zero width, \ufeff bom",
        "tabs\tnew\nlines\r\n and \x00 nul",
    ]
    entries = [
        make_entry(f"u{i}", f"key-{t}-{i}", prompt=t, response={"answer": t[::-1], t: [t]})
        for i, t in enumerate(texts)
    ]
    for entry in entries:
        store.put(entry)
    for entry in entries:
        assert_same_entry(store.get(entry.id), entry)
        assert_same_entry(store.get_by_exact_key(entry.exact_key), entry)


def test_entries_are_stored_and_returned_by_value(store: EntryStore) -> None:
    entry = make_entry()
    kept = make_entry()
    store.put(entry)
    # Changing the caller's entry after put does not change what is stored...
    assert entry.embedding is not None
    entry.embedding[0] = 42.0
    entry.response["choices"] = []
    entry.meta["api"] = "changed"
    assert_same_entry(store.get("e1"), kept)
    # ...nor does changing an entry the store returned (its arrays are writable copies).
    got = store.get("e1")
    assert got is not None
    assert got.embedding is not None
    got.embedding[:] = 0.0
    got.response.clear()
    got.meta.clear()
    assert_same_entry(store.get("e1"), kept)
    assert_same_entry(store.get_by_exact_key("k1"), kept)


# ------------------------------------------------------------------ replacement


def test_put_under_an_existing_exact_key_replaces_the_entry_and_returns_the_old_id(
    store: EntryStore,
) -> None:
    old = make_entry("old", "k", response={"answer": "old"})
    new = make_entry("new", "k", response={"answer": "new"})
    other = make_entry("other", "k-other")
    assert store.put(old) is None
    assert store.put(other) is None
    assert store.put(new) == "old"
    assert_same_entry(store.get_by_exact_key("k"), new)
    assert store.get("old") is None
    assert "old" not in store
    assert len(store) == 2
    assert {e.id for e in store.iter_entries()} == {"new", "other"}
    assert_same_entry(store.get("other"), other)


def test_put_of_the_same_entry_again_replaces_nothing(store: EntryStore) -> None:
    entry = make_entry()
    assert store.put(entry) is None
    updated = make_entry(response={"answer": "second write"})
    assert store.put(updated) is None  # its own id is never reported as replaced
    assert_same_entry(store.get("e1"), updated)
    assert_same_entry(store.get_by_exact_key("k1"), updated)
    assert len(store) == 1


def test_an_exact_key_answers_only_with_an_entry_filed_under_it(store: EntryStore) -> None:
    # The same id re-put under another exact key: the first key must not serve it.
    store.put(make_entry("e1", "k-first"))
    moved = make_entry("e1", "k-second")
    assert store.put(moved) is None
    assert store.get_by_exact_key("k-first") is None
    assert_same_entry(store.get_by_exact_key("k-second"), moved)
    assert len(store) == 1


# ------------------------------------------------------------------ deletion


def test_delete_returns_the_entry_and_removes_it_with_its_exact_key(store: EntryStore) -> None:
    a = make_entry("a", "key-a")
    b = make_entry("b", "key-b")
    store.put(a)
    store.put(b)
    assert_same_entry(store.delete("a"), a)
    assert store.get("a") is None
    assert store.get_by_exact_key("key-a") is None
    assert "a" not in store
    assert len(store) == 1
    assert [e.id for e in store.iter_entries()] == ["b"]
    assert_same_entry(store.get_by_exact_key("key-b"), b)


def test_delete_of_an_unknown_id_returns_none(store: EntryStore) -> None:
    assert store.delete("nope") is None
    store.put(make_entry())
    assert store.delete("nope") is None
    assert store.delete("k1") is None  # an exact key is not an id
    assert store.delete("e1") is not None
    assert store.delete("e1") is None  # nor is an id already deleted
    assert len(store) == 0


def test_an_exact_key_can_be_reused_after_its_entry_is_deleted(store: EntryStore) -> None:
    store.put(make_entry("a", "k"))
    store.delete("a")
    b = make_entry("b", "k")
    assert store.put(b) is None
    assert_same_entry(store.get_by_exact_key("k"), b)


# ------------------------------------------------------------------ membership


def test_contains_and_len_count_entries_not_exact_keys(store: EntryStore) -> None:
    assert len(store) == 0
    assert "e1" not in store
    for i in range(3):
        store.put(make_entry(f"e{i}", f"k{i}"))
    assert len(store) == 3
    assert all(f"e{i}" in store for i in range(3))
    assert "e3" not in store
    assert "k0" not in store


def test_iter_entries_yields_every_entry_once(store: EntryStore) -> None:
    assert list(store.iter_entries()) == []
    want = {f"e{i}": make_entry(f"e{i}", f"k{i}", scope=f"s{i % 3}") for i in range(25)}
    for entry in want.values():
        store.put(entry)
    got = list(store.iter_entries())
    assert sorted(e.id for e in got) == sorted(want)
    for entry in got:
        assert_same_entry(entry, want[entry.id])


# ------------------------------------------------------------------ expiry


def test_cull_drops_an_entry_once_its_lifetime_has_passed(store: EntryStore) -> None:
    store.put(make_entry("brief", "k-brief", created=T0, expires=T0 + 0.05))
    time.sleep(0.3)
    dropped = store.cull()
    assert isinstance(dropped, int)
    assert dropped >= 0
    assert "brief" not in store
    assert store.get("brief") is None
    assert store.get_by_exact_key("k-brief") is None
    assert len(store) == 0


def test_cull_never_drops_a_live_entry(store: EntryStore) -> None:
    # A lifetime (expires - created) runs from the put: the service's clock, here one at
    # T0 (a fake clock's), need not agree with the backend's own.
    forever = make_entry("forever", "k-forever", expires=None)
    hour = make_entry("hour", "k-hour", created=T0, expires=T0 + 3600)
    store.put(forever)
    store.put(hour)
    store.put(make_entry("brief", "k-brief", created=T0, expires=T0 + 0.05))
    time.sleep(0.3)
    store.cull()
    assert len(store) == 2
    assert_same_entry(store.get("forever"), forever)
    assert_same_entry(store.get_by_exact_key("k-forever"), forever)
    assert_same_entry(store.get("hour"), hour)
    assert_same_entry(store.get_by_exact_key("k-hour"), hour)
    assert store.cull() == 0


# ------------------------------------------------------------------ size and durability


def test_volume_is_a_non_negative_int(store: EntryStore) -> None:
    empty = store.volume()
    assert isinstance(empty, int)
    assert empty >= 0
    store.put(make_entry())
    full = store.volume()
    assert isinstance(full, int)
    assert full >= 0


def test_close_then_reopen_keeps_entries(
    impl: StoreImpl, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if not impl.persistent:
        pytest.skip("entries of this store live only as long as the process")
    a = make_entry("a", "key-a")
    b = make_entry("b", "key-b", embedding=None, expires=None)
    first = impl.open(tmp_path, request)
    first.put(a)
    first.put(b)
    first.put(make_entry("gone", "key-gone"))
    first.delete("gone")
    first.close()
    second = impl.open(tmp_path, request)
    try:
        assert len(second) == 2
        assert_same_entry(second.get("a"), a)
        assert_same_entry(second.get_by_exact_key("key-a"), a)
        assert_same_entry(second.get_by_exact_key("key-b"), b)
        assert second.get("gone") is None
        assert second.get_by_exact_key("key-gone") is None
        assert second.put(make_entry("c", "key-a")) == "a"  # the exact keys survived too
    finally:
        second.close()
