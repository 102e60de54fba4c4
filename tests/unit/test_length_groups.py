"""How a model batch is split into runs of similar length (`onnx_session.length_groups`)."""

from __future__ import annotations

import itertools
import random

from cache_service.backends.onnx_session import length_groups


def _cost(lengths: list[int], groups: list[list[int]], run_cost: int) -> int:
    return sum(run_cost + len(g) * max(lengths[i] for i in g) for g in groups)


def _partitions(items: list[int]) -> list[list[list[int]]]:
    """Every way to split `items` into groups (Bell-number many: small inputs only)."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    out = []
    for sub in _partitions(rest):
        out.append([[first], *sub])
        for k in range(len(sub)):
            out.append([*sub[:k], [first, *sub[k]], *sub[k + 1 :]])
    return out


def test_every_position_is_run_once() -> None:
    rng = random.Random(3)
    for n in range(0, 33):
        lengths = [rng.randint(1, 256) for _ in range(n)]
        groups = length_groups(lengths)
        assert sorted(itertools.chain.from_iterable(groups)) == list(range(n))
        assert all(groups)


def test_like_lengths_share_a_run_and_far_ones_do_not() -> None:
    assert length_groups([12, 13, 12, 14]) == [[0, 2, 1, 3]]
    # A 250-token input padded every short one to 250: it runs alone.
    assert length_groups([12, 250, 13, 11]) == [[3, 0, 2], [1]]


def test_the_split_is_the_cheapest_one() -> None:
    rng = random.Random(7)
    for _ in range(60):
        lengths = [rng.choice([3, 8, 9, 15, 16, 40, 41, 120]) for _ in range(rng.randint(1, 7))]
        run_cost = rng.choice([0, 4, 8, 50])
        best = min(_cost(lengths, p, run_cost) for p in _partitions(list(range(len(lengths)))))
        assert _cost(lengths, length_groups(lengths, run_cost), run_cost) == best


def test_free_runs_split_every_length_and_dear_ones_merge_all() -> None:
    lengths = [5, 9, 30, 9]
    assert sorted(len(g) for g in length_groups(lengths, run_cost=0)) == [1, 1, 2]
    assert length_groups(lengths, run_cost=10_000) == [[0, 1, 3, 2]]
