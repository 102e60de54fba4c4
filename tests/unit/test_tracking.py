"""Tracked: the cache's entries by scope, with expiries, as the sweep and snapshots read them."""

from __future__ import annotations

import pytest

from cache_service.cache.tracking import Tracked


def test_entries_are_tracked_by_scope_with_their_expiry() -> None:
    t = Tracked()
    t.add("a", ["e1", "e2"], [10.0, None])
    t.add("b", ["e1"], [5.0])  # the same id in another scope is another entry
    assert len(t) == 3
    assert t.by_scope() == {"a": {"e1": 10.0, "e2": None}, "b": {"e1": 5.0}}
    assert sorted(t.expired(5.0)) == [("e1", "b")]
    assert sorted(t.expired(100.0)) == [("e1", "a"), ("e1", "b")]  # None never expires
    assert sorted(t.pairs()) == [("e1", "a"), ("e1", "b"), ("e2", "a")]


def test_tracking_again_takes_the_new_expiry_the_last_of_repeats() -> None:
    t = Tracked()
    t.add("a", ["e1"], [10.0])
    t.add("a", ["e1", "e2", "e2"], [20.0, 1.0, None])
    assert t.copy() == {"e1": ("a", 20.0), "e2": ("a", None)}
    with pytest.raises(ValueError):
        t.add("a", ["e3"], [])


def test_removal_and_a_scope_emptied_then_used_again() -> None:
    t = Tracked()
    t.add("a", ["e1", "e2"], [1.0, 2.0])
    t.remove("a", ["e1", "e1", "unknown"])
    t.remove("no-such-scope", ["e2"])
    assert t.copy() == {"e2": ("a", 2.0)}
    t.remove("a", ["e2"])
    assert len(t) == 0 and t.by_scope() == {} and t.expired(10.0) == []
    t.add("a", ["e2"], [3.0])
    assert t.copy() == {"e2": ("a", 3.0)}
