"""The exact-key filter may answer "maybe" for a key it never saw, never "no" for one it did
(or one whose write is under way), and a reload forgets the keys its listing no longer has."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from cache_service.backends import key_filter
from cache_service.backends.key_filter import KeyFilter


def add(f: KeyFilter, key: str) -> None:
    with f.adding(key):
        pass


def test_it_answers_maybe_until_loaded_then_no_for_keys_never_held() -> None:
    f = KeyFilter()
    assert f.may_hold("anything")
    f.load(["a", "b"])
    assert f.may_hold("a") and f.may_hold("b")
    assert not f.may_hold("c")
    add(f, "c")
    assert f.may_hold("c")


def test_no_key_is_lost_across_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_filter, "_MERGE_AT", 16)
    f = KeyFilter()
    f.load([f"old-{i}" for i in range(100)])
    for i in range(1000):
        add(f, f"new-{i}")
    assert all(f.may_hold(f"old-{i}") for i in range(100))
    assert all(f.may_hold(f"new-{i}") for i in range(1000))
    assert len(f._recent) < 16  # merged as it went
    assert sum(f.may_hold(f"other-{i}") for i in range(10_000)) == 0


def test_keys_added_while_it_loads_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_filter, "_MERGE_AT", 8)
    f = KeyFilter()
    added = threading.Event()

    def add_new() -> None:
        for j in range(40):
            add(f, f"new-{j}")

    def listing() -> Iterator[str]:
        for i in range(50):
            if i == 25:
                adder = threading.Thread(target=add_new)
                adder.start()
                adder.join()
                added.set()
            yield f"listed-{i}"

    f.load(listing())
    assert added.is_set()
    assert all(f.may_hold(f"listed-{i}") for i in range(50))
    assert all(f.may_hold(f"new-{j}") for j in range(40))


def test_a_reload_forgets_keys_no_longer_listed_and_keeps_those_added_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(key_filter, "_MERGE_AT", 8)
    f = KeyFilter()
    f.load([f"old-{i}" for i in range(100)])
    for i in range(30):
        add(f, f"added-{i}")

    def listing() -> Iterator[str]:
        for i in range(50, 100):
            if i == 75:  # stores while the listing runs, merges included
                for j in range(20):
                    add(f, f"during-{j}")
            yield f"old-{i}"
        yield "added-0"

    f.reload(listing)
    assert not any(f.may_hold(f"old-{i}") for i in range(50))
    assert all(f.may_hold(f"old-{i}") for i in range(50, 100))
    assert f.may_hold("added-0") and not any(f.may_hold(f"added-{i}") for i in range(1, 30))
    assert all(f.may_hold(f"during-{j}") for j in range(20))
    assert len(f) == 50 + 1 + 20
    add(f, "after")  # adds go on as before
    assert f.may_hold("after") and f._since is None


def test_a_reload_lists_only_once_the_writes_under_way_have_ended() -> None:
    f = KeyFilter()
    f.load([])
    written: set[str] = set()
    in_write, finish = threading.Event(), threading.Event()

    def slow_write() -> None:
        with f.adding("slow"):
            in_write.set()
            finish.wait(5)
            written.add("slow")

    writer = threading.Thread(target=slow_write)
    writer.start()
    in_write.wait(5)
    listed_at: list[set[str]] = []

    def listing() -> Iterator[str]:
        listed_at.append(set(written))
        yield from sorted(written)

    reloader = threading.Thread(target=f.reload, args=(listing,))
    reloader.start()
    reloader.join(0.2)
    assert reloader.is_alive() and not listed_at  # waiting for the write begun before
    finish.set()
    writer.join(5)
    reloader.join(5)
    assert listed_at == [{"slow"}]
    assert f.may_hold("slow")


def test_a_failed_listing_leaves_the_filter_as_it_was() -> None:
    f = KeyFilter()
    f.load(["a"])

    def listing() -> Iterator[str]:
        yield "a"
        raise OSError("disk gone")

    with pytest.raises(OSError):
        f.reload(listing)
    add(f, "b")
    assert f.may_hold("a") and f.may_hold("b") and f._since is None
