"""The VectorIndex contract: what every vector index promises, written against the protocol
alone. A new implementation is proved by adding one line to IMPLEMENTATIONS."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest

from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.faiss_scope import FLAT_SCORE_ERROR
from cache_service.protocols import SearchHit, VectorIndex, Vectors

DIM = 384

IndexFactory = Callable[[int], VectorIndex]
"""Makes an empty index for vectors of the given dimension."""


class _EagerIVF(FaissIndex):
    """FaissIndex whose scopes turn IVF from 4 vectors on, maintained after every write, so
    the whole contract runs against IVF scopes (promoted, retrained as they grow)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, ivf_min=4, background=False)

    def add_many(self, scope: str, entry_ids: Sequence[str], vectors: Vectors) -> None:
        super().add_many(scope, entry_ids, vectors)
        self.maintain()

    def remove(self, scope: str, entry_ids: Iterable[str]) -> None:
        super().remove(scope, entry_ids)
        self.maintain()


IMPLEMENTATIONS = [
    pytest.param(FaissIndex, id="faiss"),
    pytest.param(_EagerIVF, id="faiss-ivf"),
]

Array = np.ndarray[Any, np.dtype[np.float32]]

SCORE_TOLERANCE = FLAT_SCORE_ERROR
"""How far a score may be from the exact cosine: an index may keep its vectors compressed
(FaissIndex's flat scopes keep float16), since the cache re-scores the candidates it reads
from each entry's own float32 vector."""


@pytest.fixture(params=IMPLEMENTATIONS)
def make_index(request: pytest.FixtureRequest) -> IndexFactory:
    factory: IndexFactory = request.param
    return factory


@pytest.fixture
def index(make_index: IndexFactory) -> VectorIndex:
    return make_index(DIM)


def units(n: int, seed: int = 0) -> Array:
    """n random unit vectors, as an (n, DIM) float32 array."""
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    out: Array = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def vec(*values: float) -> Array:
    """A unit vector whose first components are proportional to `values`."""
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return (v / np.linalg.norm(v)).astype(np.float32)


def ids(hits: list[SearchHit]) -> list[str]:
    return [h.entry_id for h in hits]


# ------------------------------------------------------------------ add and search


def test_add_then_search_finds_the_vector_itself_with_similarity_one(index: VectorIndex) -> None:
    vectors = units(20)
    for i, v in enumerate(vectors):
        index.add("s", f"id{i}", v)
    for i, v in enumerate(vectors):
        best = index.search("s", v, 1)
        assert ids(best) == [f"id{i}"]
        assert isinstance(best[0].similarity, float)
        assert best[0].similarity == pytest.approx(1.0, abs=SCORE_TOLERANCE)


def test_search_returns_at_most_k_hits_best_first(index: VectorIndex) -> None:
    index.add("s", "far", vec(0, 1, 0))  # cos 0
    index.add("s", "near", vec(1, 0.2, 0))  # cos ≈ 0.98
    index.add("s", "mid", vec(1, 1, 0))  # cos ≈ 0.707
    index.add("s", "same", vec(1, 0, 0))  # cos 1
    index.add("s", "opposite", vec(-1, 0, 0))  # cos -1
    assert ids(index.search("s", vec(1, 0, 0), 3)) == ["same", "near", "mid"]
    assert ids(index.search("s", vec(1, 0, 0), 1)) == ["same"]
    everything = index.search("s", vec(1, 0, 0), 50)  # k beyond the scope's size
    assert ids(everything) == ["same", "near", "mid", "far", "opposite"]
    sims = [h.similarity for h in everything]
    assert sims == sorted(sims, reverse=True)


def test_similarities_are_cosine_for_normalised_vectors(index: VectorIndex) -> None:
    stored = units(40, seed=1)
    for i, v in enumerate(stored):
        index.add("s", f"id{i}", v)
    for query in units(5, seed=2):
        want = stored @ query
        hits = index.search("s", query, len(stored))
        assert len(hits) == len(stored)
        for hit in hits:
            assert hit.similarity == pytest.approx(
                float(want[int(hit.entry_id[2:])]), abs=SCORE_TOLERANCE
            )
        assert ids(hits[:5]) == [f"id{i}" for i in np.argsort(-want)[:5]]


def test_adding_an_id_already_in_the_scope_does_not_duplicate_it(index: VectorIndex) -> None:
    index.add("s", "a", vec(1, 0))
    index.add("s", "a", vec(1, 0))
    index.add("s", "a", vec(0, 1))
    assert len(index) == 1
    assert ids(index.search("s", vec(1, 0), 4)) == ["a"]


# ------------------------------------------------------------------ scopes


def test_a_scope_never_answers_a_search_in_another_scope(index: VectorIndex) -> None:
    v = vec(1, 0)
    index.add("tenant-a", "a", v)
    assert index.search("tenant-b", v, 4) == []
    index.add("tenant-b", "b", v)  # the identical vector
    assert ids(index.search("tenant-a", v, 4)) == ["a"]
    assert ids(index.search("tenant-b", v, 4)) == ["b"]
    assert index.search("tenant-a/", v, 4) == []  # no prefix matching either


def test_remove_in_one_scope_leaves_other_scopes_alone(index: VectorIndex) -> None:
    index.add("s1", "a", vec(1, 0))
    index.add("s2", "b", vec(1, 0))
    index.remove("s2", ["a"])  # "a" lives in s1 only
    assert ids(index.search("s1", vec(1, 0), 4)) == ["a"]
    index.remove("s1", ["a"])
    assert ids(index.search("s2", vec(1, 0), 4)) == ["b"]
    assert len(index) == 1


def test_search_in_an_unknown_scope_returns_nothing(index: VectorIndex) -> None:
    assert index.search("s", vec(1, 0), 4) == []
    index.add("s", "a", vec(1, 0))
    assert index.search("other", vec(1, 0), 4) == []


def test_search_in_an_emptied_scope_returns_nothing(index: VectorIndex) -> None:
    index.add("s", "a", vec(1, 0))
    index.add("s", "b", vec(0, 1))
    index.remove("s", ["a", "b"])
    assert index.search("s", vec(1, 0), 4) == []
    assert len(index) == 0


# ------------------------------------------------------------------ removal


def test_removed_ids_are_no_longer_found(index: VectorIndex) -> None:
    index.add("s", "a", vec(1, 0))
    index.add("s", "b", vec(1, 0.1))
    index.add("s", "c", vec(0, 1))
    index.remove("s", ["a", "c"])
    assert ids(index.search("s", vec(1, 0), 4)) == ["b"]
    assert ids(index.search("s", vec(0, 1), 4)) == ["b"]
    assert len(index) == 1


def test_removing_unknown_ids_is_a_no_op(index: VectorIndex) -> None:
    index.remove("s", ["a"])  # empty index
    index.add("s", "a", vec(1, 0))
    index.add("s", "b", vec(0, 1))
    index.remove("s", ["not-there"])
    index.remove("s", [])
    index.remove("no-such-scope", ["a", "b"])
    index.remove("s", iter(["not-there-either"]))  # any iterable of ids
    assert len(index) == 2
    assert ids(index.search("s", vec(1, 0), 4)) == ["a", "b"]


def test_an_id_can_be_added_again_after_removal(index: VectorIndex) -> None:
    index.add("s", "a", vec(1, 0))
    index.add("s", "keep", vec(0, 1))
    index.remove("s", ["a"])
    index.add("s", "a", vec(1, 0.05))
    assert len(index) == 2
    best = index.search("s", vec(1, 0.05), 1)
    assert ids(best) == ["a"]
    assert best[0].similarity == pytest.approx(1.0, abs=SCORE_TOLERANCE)
    index.remove("s", ["a", "keep"])
    index.add("s", "a", vec(1, 0))  # and into a scope emptied by removal
    assert ids(index.search("s", vec(1, 0), 4)) == ["a"]


# ------------------------------------------------------------------ size and clear


def test_len_counts_vectors_in_all_scopes(index: VectorIndex) -> None:
    assert len(index) == 0
    for i in range(7):
        index.add(f"s{i % 3}", f"id{i}", vec(1, i))
    assert len(index) == 7
    index.remove("s0", ["id0"])
    assert len(index) == 6


def test_clear_empties_every_scope(index: VectorIndex) -> None:
    for i in range(5):
        index.add(f"s{i % 2}", f"id{i}", vec(1, i))
    index.clear()
    assert len(index) == 0
    assert index.search("s0", vec(1, 0), 4) == []
    assert index.search("s1", vec(1, 1), 4) == []
    index.add("s0", "id0", vec(1, 0))  # and stays usable
    assert ids(index.search("s0", vec(1, 0), 4)) == ["id0"]
    assert len(index) == 1


# ------------------------------------------------------------------ add_many


def test_add_many_is_equivalent_to_adding_one_by_one(make_index: IndexFactory) -> None:
    one_by_one, bulk = make_index(DIM), make_index(DIM)
    a, b = units(30, seed=3), units(12, seed=4)
    a_ids = [f"a{i}" for i in range(len(a))]
    b_ids = [f"b{i}" for i in range(len(b))]
    # An id already present and one repeated within the batch: as n adds would treat them.
    for target in (one_by_one, bulk):
        target.add("s1", "a0", a[5])
    batch_ids = [*a_ids, "a3"]
    batch = np.vstack([a, b[:1]])
    for entry_id, v in zip(batch_ids, batch, strict=True):
        one_by_one.add("s1", entry_id, v)
    bulk.add_many("s1", batch_ids, batch)
    for entry_id, v in zip(b_ids, b, strict=True):
        one_by_one.add("s2", entry_id, v)
    bulk.add_many("s2", b_ids, b)

    assert len(bulk) == len(one_by_one) == len(a) + len(b)
    # a0 holds a[5]'s vector (the batch's a0 was skipped), a3 its first, b0 none in s1.
    held = {**dict(zip(a_ids, a, strict=True)), "a0": a[5], **dict(zip(b_ids, b, strict=True))}
    for scope, queries in (("s1", units(4, seed=5)), ("s2", units(4, seed=6)), ("s1", b[:1])):
        for q in queries:
            want = one_by_one.search(scope, q, 50)
            got = bulk.search(scope, q, 50)
            assert sorted(ids(got)) == sorted(ids(want))
            # Best first by the true cosines; a0 and a5 tie, and compressed vectors may
            # break that tie either way.
            true = [float(held[i] @ q) for i in ids(got)]
            assert all(x >= y - 2 * SCORE_TOLERANCE for x, y in itertools.pairwise(true))
            assert [h.similarity for h in got] == pytest.approx(true, abs=SCORE_TOLERANCE)
    for i, v in enumerate(b):
        assert ids(bulk.search("s2", v, 1)) == [f"b{i}"]
    bulk.remove("s1", a_ids)
    assert bulk.search("s1", a[0], 4) == []
    assert len(bulk) == len(b)


@pytest.mark.parametrize("n_ids, n_rows", [(3, 2), (2, 3), (0, 1), (1, 0)])
def test_add_many_with_mismatched_lengths_raises_value_error(
    index: VectorIndex, n_ids: int, n_rows: int
) -> None:
    index.add("s", "keep", vec(1, 0))
    with pytest.raises(ValueError):
        index.add_many("s", [f"id{i}" for i in range(n_ids)], units(n_rows))
    assert len(index) == 1  # nothing was added
    assert ids(index.search("s", vec(1, 0), 4)) == ["keep"]


def test_add_many_with_vectors_of_another_dimension_raises_value_error(
    index: VectorIndex,
) -> None:
    with pytest.raises(ValueError):
        index.add_many("s", ["a", "b"], np.ones((2, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError):
        index.add_many("s", ["a", "b"], np.ones(2 * DIM, dtype=np.float32))
    assert len(index) == 0


def test_add_many_of_nothing_is_a_no_op(index: VectorIndex) -> None:
    index.add_many("s", [], np.zeros((0, DIM), dtype=np.float32))
    assert len(index) == 0
    assert index.search("s", vec(1, 0), 4) == []
