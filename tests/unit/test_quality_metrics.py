from __future__ import annotations

import pytest

from benchmarks.quality.metrics import hit_quality


def test_counts_and_rates() -> None:
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    served = [True, True, True, False, True, False, False, False, False, False]
    q = hit_quality(labels, served)
    assert (q.lookups, q.positives, q.negatives) == (10, 4, 6)
    assert (q.served, q.right_hits, q.wrong_hits) == (4, 3, 1)
    assert q.precision == pytest.approx(0.75)
    assert q.recall == pytest.approx(0.75)
    assert q.negatives_served == pytest.approx(1 / 6)
    assert q.error_rate == pytest.approx(0.1)


def test_nothing_served_is_perfectly_precise_and_recalls_nothing() -> None:
    q = hit_quality([1, 0], [False, False])
    assert q.precision == 1.0
    assert q.recall == 0.0
    assert q.error_rate == 0.0


def test_all_negative_set_has_no_recall() -> None:
    q = hit_quality([0, 0, 0], [True, False, False])
    assert q.recall == 0.0
    assert q.negatives_served == pytest.approx(1 / 3)


def test_length_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        hit_quality([1], [True, False])
