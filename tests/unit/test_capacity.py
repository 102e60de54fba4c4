from __future__ import annotations

import pytest

from cache_service.cache.capacity import Capacity


def test_the_operator_is_warned_once_per_crossing_not_at_every_sweep() -> None:
    c = Capacity(1000, warn_at=0.8, margin=0.05)
    assert c.observe(500) is None
    assert c.observe(810) == "filling"
    assert c.observe(820) is None  # still full: said already
    assert c.observe(780) is None  # inside the margin: hovering, not relieved
    assert c.observe(700) == "relieved"
    assert c.observe(900) == "filling"
    assert c.as_dict() == {
        "store_bytes": 900,
        "store_limit_bytes": 1000,
        "store_fill": 0.9,
        "evicted": 0,
    }


def test_an_eviction_is_a_warning_whatever_the_reading() -> None:
    c = Capacity(1000)
    assert c.observe(100, evicted=3) == "filling"  # the store evicted: it was full
    assert c.evicted == 3
    assert c.observe(100) == "relieved"


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        Capacity(0)
    with pytest.raises(ValueError):
        Capacity(10, warn_at=1.5)
