"""Cheap searches run on the event loop, costly ones in a thread, by each scope's own
recent cost."""

from __future__ import annotations

from cache_service.cache.search_placement import SearchPlacement


def test_a_scope_goes_inline_only_once_its_searches_were_measured_cheap() -> None:
    p = SearchPlacement(inline_s=0.001)
    assert not p.inline("s")  # never searched: a thread first
    p.took("s", 0.0002)
    assert p.inline("s") and not p.inline("other")


def test_one_slow_search_does_not_move_a_scope_but_a_grown_scope_moves() -> None:
    p = SearchPlacement(inline_s=0.001)
    for _ in range(10):
        p.took("s", 0.0002)
    p.took("s", 0.003)  # a GC pause, a cold page
    assert p.inline("s")
    for _ in range(5):
        p.took("s", 0.003)  # the scope grew
    assert not p.inline("s")
    for _ in range(20):
        p.took("s", 0.0002)  # and shrank again (expiry)
    assert p.inline("s")


def test_the_memory_of_scopes_is_bounded() -> None:
    p = SearchPlacement(inline_s=0.001)
    for i in range(25_000):
        p.took(f"scope-{i}", 0.0002)
    assert len(p._cost) <= 10_000
    assert p.inline("scope-24999")


def test_a_lookup_alone_goes_inline_up_to_the_longer_bound() -> None:
    p = SearchPlacement(inline_s=0.001, alone_s=0.004)
    p.took("s", 0.003)
    assert not p.inline("s") and p.inline("s", alone=True)
    for _ in range(10):
        p.took("s", 0.006)
    assert not p.inline("s", alone=True)
