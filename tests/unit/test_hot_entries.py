"""The latest exact hits in memory: bounded, least recently read first out, and never an
entry removed from the store."""

from __future__ import annotations

from cache_service.cache.hot_entries import MAX_ANSWER_CHARS, HotEntries
from cache_service.protocols import Entry


def entry(entry_id: str, key: str, namespace: str = "ns", body: str = "{}") -> Entry:
    return Entry(
        id=entry_id,
        scope="s",
        exact_key=key,
        namespace=namespace,
        model="m",
        prompt="p",
        embedding=None,
        body=body,
        created=0.0,
        expires=None,
        prompt_tokens=1,
        completion_tokens=1,
    )


def test_the_least_recently_read_leaves_first() -> None:
    hot = HotEntries(2)
    for i in range(2):
        hot.keep(entry(f"e{i}", f"k{i}"), hot.mark())
    assert hot.get("k0") is not None  # now the most recent
    hot.keep(entry("e2", "k2"), hot.mark())
    assert hot.get("k1") is None
    assert hot.get("k0") is not None and hot.get("k2") is not None


def test_a_new_entry_under_a_key_takes_its_place() -> None:
    hot = HotEntries(4)
    hot.keep(entry("old", "k"), hot.mark())
    hot.keep(entry("new", "k"), hot.mark())
    got = hot.get("k")
    assert got is not None and got.id == "new"
    hot.forget(["old"])  # the replaced one leaving the store does not take the new one
    assert hot.get("k") is not None


def test_removals_forget_by_id_or_by_predicate() -> None:
    hot = HotEntries(4)
    hot.keep(entry("a", "ka"), hot.mark())
    hot.keep(entry("b", "kb", namespace="other"), hot.mark())
    hot.keep(entry("c", "kc"), hot.mark())
    hot.forget(["a", "unknown"])
    assert hot.get("ka") is None and hot.get("kc") is not None
    hot.forget_where(lambda e: e.namespace == "other")
    assert hot.get("kb") is None and hot.get("kc") is not None


def test_an_entry_read_across_a_removal_is_refused() -> None:
    hot = HotEntries(4)
    mark = hot.mark()
    hot.forget(["anything"])  # some removal ran while the store was read
    hot.keep(entry("a", "ka"), mark)
    assert hot.get("ka") is None
    hot.keep(entry("a", "ka"), hot.mark())
    assert hot.get("ka") is not None


def test_size_zero_keeps_nothing() -> None:
    hot = HotEntries(0)
    hot.keep(entry("a", "ka"), hot.mark())
    assert hot.get("ka") is None


def test_a_long_answer_is_not_kept() -> None:
    hot = HotEntries(4)
    hot.keep(entry("a", "ka", body="{" + "x" * MAX_ANSWER_CHARS + "}"), hot.mark())
    assert hot.get("ka") is None
