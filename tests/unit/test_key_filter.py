"""The exact-key filter may answer "maybe" for a key it never saw, never "no" for one it did."""

from __future__ import annotations

import threading

import pytest

from cache_service.backends import key_filter
from cache_service.backends.key_filter import KeyFilter


def test_it_answers_maybe_until_loaded_then_no_for_keys_never_held() -> None:
    f = KeyFilter()
    assert f.may_hold("anything")
    f.load(["a", "b"])
    assert f.may_hold("a") and f.may_hold("b")
    assert not f.may_hold("c")
    f.add("c")
    assert f.may_hold("c")


def test_no_key_is_lost_across_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_filter, "_MERGE_AT", 16)
    f = KeyFilter()
    f.load([f"old-{i}" for i in range(100)])
    for i in range(1000):
        f.add(f"new-{i}")
    assert all(f.may_hold(f"old-{i}") for i in range(100))
    assert all(f.may_hold(f"new-{i}") for i in range(1000))
    assert len(f._recent) < 16  # merged as it went
    assert sum(f.may_hold(f"other-{i}") for i in range(10_000)) == 0


def test_keys_added_while_it_loads_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_filter, "_MERGE_AT", 8)
    f = KeyFilter()
    added = threading.Event()

    def listing() -> object:
        for i in range(50):
            if i == 25:
                adder = threading.Thread(target=lambda: [f.add(f"new-{j}") for j in range(40)])
                adder.start()
                adder.join()
                added.set()
            yield f"listed-{i}"

    f.load(listing())  # type: ignore[arg-type]
    assert added.is_set()
    assert all(f.may_hold(f"listed-{i}") for i in range(50))
    assert all(f.may_hold(f"new-{j}") for j in range(40))
