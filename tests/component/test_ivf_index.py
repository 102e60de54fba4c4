"""FaissIndex's approximate search: a scope is promoted from flat to IVF past ivf_min, in
maintain(), without losing what is written meanwhile; recall is measured, not assumed."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache_service.backends import faiss_index, fast_scan, ivf_build
from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.faiss_scope import FLAT_ROUNDING, FLAT_SCORE_ERROR, flat_codes
from cache_service.protocols import Vector

DIM = 384
Array = np.ndarray[Any, np.dtype[np.float32]]


def clustered(n: int, seed: int = 0, centres: int = 60, spread: float = 0.9) -> Array:
    """n unit vectors around `centres` random directions (cos ≈ 0.75 to their centre), the
    way real prompts cluster by topic."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, DIM)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    noise = rng.standard_normal((n, DIM)).astype(np.float32)
    noise *= spread / np.linalg.norm(noise, axis=1, keepdims=True)
    v = c[rng.integers(0, centres, n)] + noise
    out: Array = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def names(n: int, prefix: str = "id") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def index_of(n: int, ivf_min: int = 1000, seed: int = 0) -> tuple[FaissIndex, Array]:
    index = FaissIndex(DIM, ivf_min=ivf_min, background=False)
    vectors = clustered(n, seed)
    index.add_many("s", names(n), vectors)
    return index, vectors


def test_a_scope_stays_flat_below_ivf_min_and_maintain_promotes_it_past() -> None:
    index, vectors = index_of(999)
    assert index.maintain() == 0
    assert index.stats()["s"].kind == "flat"
    index.add("s", "one-more", vectors[0])
    assert index.stats()["s"].kind == "flat"  # maintain() promotes, not the write
    assert index.maintain() == 1
    st = index.stats()["s"]
    assert st.kind == "ivf" and st.size == 1000 and st.trained_at == 1000
    assert st.nlist is not None and st.nprobe is not None and 1 <= st.nprobe <= st.nlist
    assert st.recall_at_1 is not None and st.recall_at_1 >= 0.99
    assert not st.building
    assert index.maintain() == 0  # nothing more to do


def test_float16_rows_go_into_a_flat_scope_as_they_are_and_into_an_ivf_one_widened() -> None:
    # How a snapshot's flat scopes come back: their rows are the float16 codes they were.
    index, _ = index_of(1200)
    assert index.maintain() == 1 and index.stats()["s"].kind == "ivf"
    halves = clustered(300, seed=5).astype(np.float16)
    index.add_many("flat", names(300), halves)
    _, codes = flat_codes(index._scopes["flat"].index)
    assert np.array_equal(codes, halves)
    index.add_many("s", names(300, "h"), halves)
    assert index.stats()["s"].size == 1500
    for i in (0, 7, 299):
        query = halves[i].astype(np.float32)
        assert [h.entry_id for h in index.search("flat", query, 1)] == [f"id{i}"]
        assert [h.entry_id for h in index.search("s", query, 1)] == [f"h{i}"]


def test_never_promoted_without_ivf_min() -> None:
    index = FaissIndex(DIM, ivf_min=None, background=False)
    index.add_many("s", names(2000), clustered(2000))
    assert index.maintain() == 0
    assert index.stats()["s"].kind == "flat"


def test_promotion_keeps_the_results_for_stored_vectors() -> None:
    index, vectors = index_of(3000)
    before = [index.search("s", v, 1) for v in vectors]
    index.maintain()
    assert index.stats()["s"].kind == "ivf"
    after = [index.search("s", v, 1) for v in vectors]
    assert [h[0].entry_id for h in after] == [h[0].entry_id for h in before]
    assert [h[0].similarity for h in after] == pytest.approx([h[0].similarity for h in before])


def test_an_exact_duplicate_is_found_at_similarity_one_after_promotion() -> None:
    index, vectors = index_of(3000, seed=1)
    index.maintain()
    for i, v in enumerate(vectors):
        best = index.search("s", v, 1)
        assert best[0].entry_id == f"id{i}"
        assert best[0].similarity == pytest.approx(1.0, abs=FLAT_SCORE_ERROR)


def test_measured_recall_reaches_the_target_and_holds_on_fresh_queries() -> None:
    index, vectors = index_of(5000, seed=2)
    index.maintain()
    st = index.stats()["s"]
    assert st.recall_at_1 is not None and st.recall_at_1 >= index.target_recall
    # Independently: new paraphrase-like queries, top-1 against brute force.
    rng = np.random.default_rng(7)
    q = vectors[rng.choice(len(vectors), 300, replace=False)]
    q = q + 0.45 * rng.standard_normal(q.shape).astype(np.float32) / np.sqrt(DIM)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    best = (q @ vectors.T).max(axis=1)
    # 5,000 vectors: the scope keeps 8-bit codes, so its own scores are approximate; what
    # it found is scored exactly here, from the vector the id names.
    assert index._scopes["s"].index.code_size == DIM
    top = [int(index.search("s", x, 1)[0].entry_id[2:]) for x in q]
    found = np.einsum("ij,ij->i", q, vectors[top])
    assert np.mean(found >= best - 1e-5) >= 0.97
    scores = np.array([index.search("s", x, 1)[0].similarity for x in q])
    assert np.abs(scores - found).max() < 0.005


def test_the_nprobe_chosen_is_the_smallest_that_reaches_the_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    measured: dict[int, float] = {}
    real = ivf_build.recall_at_1

    def recording(
        ivf: Any, fast: Any, queries: Vector, truth: Vector, nprobe: int, read: Any
    ) -> float:
        measured[nprobe] = real(ivf, fast, queries, truth, nprobe, read)
        return measured[nprobe]

    monkeypatch.setattr(ivf_build, "recall_at_1", recording)
    # Unclustered vectors: lists mean little, so more of them must be probed.
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((4000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(DIM, ivf_min=1000, background=False)
    index.add_many("s", names(4000), vectors)
    index.maintain()
    st = index.stats()["s"]
    assert st.nprobe is not None and st.nlist is not None and st.recall_at_1 is not None
    assert 1 < st.nprobe < st.nlist
    assert measured[st.nprobe] == st.recall_at_1 >= index.target_recall
    assert measured[st.nprobe - 1] < index.target_recall  # one list fewer falls short
    # The truth it measured against is the exact one: with every list probed, recall is 1.
    ivf, fast = index._scopes["s"].index, index._scopes["s"].fast
    queries = ivf_build.noisy(vectors[:200], np.random.default_rng(1), index.recall_floor)
    truth = (queries @ vectors.T).max(axis=1)

    def rows(labels: Any) -> Any:  # FaissIndex numbered the vectors 0.. in order
        return iter([(labels, vectors[labels])])

    assert real(ivf, fast, queries, truth, st.nlist, rows) == 1.0


class _WritesDuringBuild(FaissIndex):
    """Runs `during` once, outside every lock as another thread's writes would, before the
    build's `at`-th read of the live index: 1, the training sample; 2, the first pass (list
    sizes); 3, the second (adding); 4, with fast-scan codes, their filling."""

    during: Any = None
    at = 1
    _reads = 0

    def _read(self, s: Any, labels: Any) -> Any:
        self._reads += 1
        if self._reads == self.at and self.during is not None:
            self.during(self)
        return super()._read(s, labels)


@pytest.mark.parametrize(
    ("at", "fast"), [(1, False), (2, False), (3, False), (1, True), (3, True), (4, True)]
)
def test_adds_and_removes_during_a_build_are_not_lost(
    at: int, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fast:  # 8-bit codes and fast-scan ones, at 2,000 vectors
        monkeypatch.setattr(ivf_build, "SQ_MIN_TRAIN", 1000)
        monkeypatch.setattr(fast_scan, "WORTH_IT_CODES", 0)
    index = _WritesDuringBuild(DIM, ivf_min=1000, background=False)
    index.at = at
    vectors = clustered(2000, seed=4)
    extra = clustered(300, seed=5)
    index.add_many("s", names(2000), vectors)
    seen: dict[str, Any] = {}

    def writes(ix: FaissIndex) -> None:
        assert ix.stats()["s"].building
        ix.add_many("s", names(300, "new"), extra)
        ix.remove("s", names(500))  # stored before the build
        ix.remove("s", ["new0", "new1"])  # added during it
        ix.add("s", "id3", vectors[3])  # removed, then back
        seen["flat"] = ix.search("s", extra[10], 1)  # searches go on, on the flat index
        seen["kind"] = ix.stats()["s"].kind

    index.during = writes
    assert index.maintain() == 1
    assert seen["kind"] == "flat" and seen["flat"][0].entry_id == "new10"
    st = index.stats()["s"]
    assert st.kind == "ivf" and not st.building and st.fast_scan == fast
    assert len(index) == st.size == 2000 + 300 - 500 - 2 + 1
    if fast:  # the writes reached both sets of codes
        assert index._scopes["s"].fast.ntotal == st.size
    for i in range(2, 300):
        assert index.search("s", extra[i], 1)[0].entry_id == f"new{i}"
    for i in (0, 1):
        assert index.search("s", extra[i], 1)[0].entry_id != f"new{i}"
    for i in range(500, 2000):
        assert index.search("s", vectors[i], 1)[0].entry_id == f"id{i}"
    assert index.search("s", vectors[3], 1)[0].entry_id == "id3"
    for i in range(500):
        assert i == 3 or index.search("s", vectors[i], 1)[0].entry_id != f"id{i}"
    # And removal keeps working on the IVF scope itself.
    index.remove("s", names(300, "new"))
    assert all(index.search("s", extra[i], 1)[0].entry_id.startswith("id") for i in range(300))


def test_a_long_log_is_drained_before_the_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faiss_index, "_SWAP_REPLAY_MAX", 10)
    index = _WritesDuringBuild(DIM, ivf_min=1000, background=False)
    vectors = clustered(1500, seed=6)
    index.add_many("s", names(1000), vectors[:1000])
    index.during = lambda ix: ix.add_many("s", names(500, "late"), vectors[1000:])
    index.maintain()
    assert index.stats()["s"].kind == "ivf"
    assert len(index) == 1500
    assert index.search("s", vectors[1200], 1)[0].entry_id == "late200"


def test_a_scope_emptied_or_cleared_during_a_build_is_not_brought_back() -> None:
    for wipe in (lambda ix: ix.remove("s", names(1000)), lambda ix: ix.clear()):
        index = _WritesDuringBuild(DIM, ivf_min=1000, background=False)
        index.add_many("s", names(1000), clustered(1000))
        index.during = wipe
        assert index.maintain() == 0
        assert len(index) == 0 and index.stats() == {}
        assert index.search("s", clustered(1)[0], 1) == []


def test_a_shrunken_scope_is_demoted_and_a_grown_one_retrained() -> None:
    index, _ = index_of(1200, ivf_min=1000, seed=8)
    index.maintain()
    first = index.stats()["s"]
    assert first.kind == "ivf" and first.trained_at == 1200
    # Below 4 × the size it was trained at: no retrain.
    more = clustered(5000, seed=9)
    index.add_many("s", names(3599, "m"), more[:3599])
    assert index.maintain() == 0
    index.add("s", "m3599", more[3599])  # 4800 = 4 × 1200
    assert index.maintain() == 1
    grown = index.stats()["s"]
    assert grown.kind == "ivf" and grown.trained_at == 4800
    assert grown.nlist is not None and first.nlist is not None and grown.nlist > first.nlist
    # Shrunk to ivf_min // 4 it stays IVF; below, it goes back to flat.
    index.remove("s", names(1200))
    index.remove("s", names(3350, "m"))
    assert len(index) == 250
    assert index.maintain() == 0 and index.stats()["s"].kind == "ivf"
    index.remove("s", ["m3350"])
    assert index.maintain() == 1
    assert index.stats()["s"].kind == "flat"
    for i in range(3351, 3600):
        best = index.search("s", more[i], 1)[0]
        # The flat index was refilled from the IVF's 8-bit codes (4,800 training vectors):
        # the vectors are the decoded ones, within a few thousandths of the originals.
        assert best.entry_id == f"m{i}" and best.similarity == pytest.approx(1.0, abs=0.005)


def test_a_scope_that_grew_past_the_retrain_factor_during_its_build_is_retrained_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart's rebuild from the store adds while the scope's promotion builds: the same
    maintain() retrains it on what it holds, rather than the next write or restart."""
    index, _ = index_of(1000, ivf_min=1000, seed=10)
    more = clustered(3000, seed=11)
    build = index._build_ivf
    calls: list[int] = []

    def build_while_adding(s: Any, labels: Any) -> Any:
        calls.append(len(labels))
        if len(calls) == 1:
            index.add_many("s", names(3000, "m"), more)  # logged, replayed at the swap
        return build(s, labels)

    monkeypatch.setattr(index, "_build_ivf", build_while_adding)
    assert index.maintain() == 2
    assert calls == [1000, 4000]
    st = index.stats()["s"]
    assert st.kind == "ivf" and st.size == 4000 and st.trained_at == 4000
    assert index.maintain() == 0


def test_the_background_thread_promotes_without_being_asked() -> None:
    index = FaissIndex(DIM, ivf_min=1000)
    try:
        vectors = clustered(1000)
        index.add_many("s", names(1000), vectors)
        deadline = time.monotonic() + 30
        while index.stats()["s"].kind != "ivf":
            assert time.monotonic() < deadline, "not promoted within 30 s"
            time.sleep(0.02)
        assert index.search("s", vectors[5], 1)[0].entry_id == "id5"
    finally:
        index.close()


def test_a_tiny_ivf_scope_still_returns_min_k_size_hits() -> None:
    rng = np.random.default_rng(12)
    vectors = rng.standard_normal((40, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(DIM, ivf_min=4, background=False)
    index.add_many("s", names(40), vectors)
    index.maintain()
    st = index.stats()["s"]
    assert st.kind == "ivf" and st.nlist == 10
    hits = index.search("s", vectors[0], 40)  # more than the probed lists hold
    assert len(hits) == 40
    assert [h.entry_id for h in hits[:1]] == ["id0"]
    sims = [h.similarity for h in hits]
    assert sims == sorted(sims, reverse=True)


def test_scopes_are_promoted_on_their_own() -> None:
    index = FaissIndex(DIM, ivf_min=1000, background=False)
    big, small = clustered(1000, seed=10), clustered(10, seed=11)
    index.add_many("big", names(1000), big)
    index.add_many("small", names(10), small)
    index.maintain()
    st = index.stats()
    assert st["big"].kind == "ivf" and st["small"].kind == "flat"
    assert index.search("small", big[0], 20)[0].entry_id in names(10)
    assert len(index.search("small", big[0], 20)) == 10


def test_a_failed_build_keeps_the_flat_scope_and_waits_for_it_to_double(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    index, vectors = index_of(1000, seed=13)

    def fails(*_: Any) -> Any:
        raise RuntimeError("no memory")

    monkeypatch.setattr(index, "_build_ivf", fails)
    assert index.maintain() == 0
    assert "index build failed" in caplog.text
    st = index.stats()["s"]
    assert st.kind == "flat" and not st.building
    assert index.search("s", vectors[7], 1)[0].entry_id == "id7"
    monkeypatch.undo()
    more = clustered(1000, seed=14)
    index.add_many("s", names(999, "m"), more[:999])
    assert index.maintain() == 0  # not retried on every write
    index.add("s", "m999", more[999])
    assert index.maintain() == 1
    assert index.stats()["s"].kind == "ivf" and len(index) == 2000


def test_a_promoted_scope_exports_and_imports_like_a_flat_one() -> None:
    """What an index snapshot saves and restores (backends/index_snapshot.py)."""
    index, vectors = index_of(1200)
    assert index.maintain() == 1 and index.stats()["s"].kind == "ivf"
    ids, exported = index.export_scope("s")
    assert sorted(ids) == sorted(names(1200))
    order = {name: i for i, name in enumerate(names(1200))}
    # Read back through float16 (the flat scope's, then the promoted one's copy of them).
    assert np.allclose(exported, vectors[[order[i] for i in ids]], rtol=FLAT_ROUNDING, atol=1e-7)
    restored = FaissIndex(DIM, ivf_min=1000, background=False)
    restored.add_many("s", ids, exported)
    assert restored.maintain() == 1  # promoted again, past ivf_min
    for row in (0, 599, 1199):
        assert restored.search("s", vectors[row], 1)[0].entry_id == names(1200)[row]


def test_the_summary_reports_kinds_and_the_lowest_measured_recall() -> None:
    index, _ = index_of(1200)
    index.add("other", "one", clustered(1, seed=3)[0])
    assert index.summary() == {
        "flat_scopes": 2,
        "ivf_scopes": 0,
        "fast_scan_scopes": 0,
        "building": 0,
        "ivf_min_recall_at_1": None,
        "recall_floor": ivf_build.RECALL_FLOOR,
    }
    index.maintain()
    summary = index.summary()
    assert (summary["flat_scopes"], summary["ivf_scopes"]) == (1, 1)
    assert summary["ivf_min_recall_at_1"] >= 0.99


def test_an_ivf_scope_exports_whole_and_imports_without_a_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index, vectors = index_of(5000)  # trained on 5,000: 8-bit codes
    assert index.maintain() == 1
    saved = index.export_ivf("s")
    assert saved is not None and index.export_ivf("nowhere") is None
    assert sorted(saved.ids) == sorted(names(5000))
    # What the import leaves out, removed here too: beyond the top-1, which candidates the
    # fast-scan codes shortlist depends on what else the lists hold.
    index.remove("s", ["id0", "id1"])
    before = [index.search("s", v, 3) for v in vectors[:200]]

    def no_build(*_: Any, **__: Any) -> Any:
        raise AssertionError("trained again")

    monkeypatch.setattr(faiss_index, "build_ivf", no_build)
    kept = [i for i, name in enumerate(saved.ids) if name not in {"id0", "id1"}]
    restored = FaissIndex(DIM, ivf_min=1000, background=False)
    restored.import_ivf(
        "s",
        ivf_build_export(saved, kept),
    )
    st, was = restored.stats()["s"], index.stats()["s"]
    assert (st.kind, st.nlist, st.nprobe, st.recall_at_1) == (
        "ivf",
        was.nlist,
        was.nprobe,
        was.recall_at_1,
    )
    assert len(restored) == 4998
    for row, hits in enumerate(before[2:], start=2):
        assert restored.search("s", vectors[row], 3) == hits
    for row in (0, 1):  # left out of the labels kept: removed from the index
        assert all(h.entry_id != f"id{row}" for h in restored.search("s", vectors[row], 10))
    fresh = clustered(1, seed=99)[0]
    restored.add("s", "fresh", fresh)
    assert restored.search("s", fresh, 1)[0].entry_id == "fresh"
    assert restored.search("s", vectors[2], 1)[0].entry_id == "id2"
    with pytest.raises(ValueError, match="already indexed"):
        restored.import_ivf("s", saved)


def test_an_ivf_scope_exports_to_files_and_imports_from_them(tmp_path: Path) -> None:
    # What a snapshot does: FAISS writes the lists and reads them back, no copy in memory.
    index, vectors = index_of(5000)
    assert index.maintain() == 1
    files = (tmp_path / "ivf.faiss", tmp_path / "fast.faiss")
    saved = index.export_ivf("s", files)
    assert saved is not None and saved.blob == files[0] and files[0].stat().st_size > 0
    in_memory = index.export_ivf("s")
    assert in_memory is not None and bytes(in_memory.blob) == files[0].read_bytes()
    restored = FaissIndex(DIM, ivf_min=1000, background=False)
    restored.import_ivf("s", saved)
    for row in (0, 7, 4999):
        assert restored.search("s", vectors[row], 3) == index.search("s", vectors[row], 3)


def test_an_imported_ivf_scope_is_relabelled_to_rows_beside_other_scopes() -> None:
    # Labels are rows of one id table for every scope: the saved lists' labels (0..4999)
    # are the very rows another scope holds here, so the import relabels its lists.
    index, vectors = index_of(5000)
    assert index.maintain() == 1
    saved = index.export_ivf("s")
    assert saved is not None
    restored = FaissIndex(DIM, ivf_min=None, background=False)
    other = clustered(5000, seed=5)
    restored.add_many("t", [f"t{i}" for i in range(5000)], other)
    restored.import_ivf("s", saved)
    assert len(restored) == 10_000
    for row in (0, 7, 4999):
        assert restored.search("s", vectors[row], 1)[0].entry_id == f"id{row}"
        assert restored.search("t", other[row], 1)[0].entry_id == f"t{row}"
    restored.remove("s", ["id7"])  # through the rebuilt direct map, by its new label
    assert all(h.entry_id != "id7" for h in restored.search("s", vectors[7], 10))
    assert restored.search("t", other[7], 1)[0].entry_id == "t7"
    assert len(restored) == 9_999


def ivf_build_export(saved: Any, rows: list[int]) -> Any:
    """`saved` keeping only the labels at `rows`."""
    return dataclasses.replace(saved, labels=saved.labels[rows], ids=[saved.ids[r] for r in rows])


def test_fast_scan_codes_are_built_only_where_searches_scan_many_8bit_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index, _ = index_of(5000)  # clustered: a few lists a search, a few hundred codes
    index.maintain()
    st, s = index.stats()["s"], index._scopes["s"]
    assert st.nprobe is not None and st.nlist is not None
    assert st.nprobe * 5000 / st.nlist < fast_scan.WORTH_IT_CODES
    assert s.fast is None
    monkeypatch.setattr(fast_scan, "WORTH_IT_CODES", 0)
    index, _ = index_of(5000)
    index.maintain()
    assert index._scopes["s"].fast is not None


def test_an_8bit_scope_shortlists_with_fast_scan_codes_and_scores_from_its_8bit_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fast_scan, "WORTH_IT_CODES", 0)
    index, vectors = index_of(5000)  # trained on 5,000: 8-bit codes, and fast-scan ones
    index.maintain()
    s = index._scopes["s"]
    assert s.fast is not None and s.fast.ntotal == s.index.ntotal == 5000
    assert index.stats()["s"].fast_scan and index.summary()["fast_scan_scopes"] == 1
    q = ivf_build.noisy(vectors[:300], np.random.default_rng(5), index.recall_floor)
    exact = q @ vectors.T
    found = 0
    for i, query in enumerate(q):
        hits = index.search("s", query, 4)
        labels = [int(h.entry_id[2:]) for h in hits]
        # Scores are the 8-bit codes' (within a few thousandths of the float ones), not the
        # fast-scan codes' rough 4-bit ones, and come best first.
        assert np.allclose([h.similarity for h in hits], exact[i, labels], atol=0.01)
        assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
        found += labels[0] == int(np.argmax(exact[i]))
    assert found / len(q) >= 0.97
    # Removed entries leave the fast-scan codes too (a label left there would be shortlisted and
    # looked up in codes that no longer hold it).
    index.remove("s", names(2500))
    assert s.fast.ntotal == s.index.ntotal == 2500
    assert all(int(h.entry_id[2:]) >= 2500 for v in vectors[:50] for h in index.search("s", v, 4))


def test_an_8bit_scope_restored_without_fast_scan_codes_is_searched_then_rebuilt_with_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fast_scan, "WORTH_IT_CODES", 0)
    index, vectors = index_of(5000)
    index.maintain()
    exported = index.export_ivf("s")
    assert exported is not None
    saved = dataclasses.replace(exported, fast_blob=None)  # an older snapshot
    restored = FaissIndex(DIM, ivf_min=1000, background=False)
    restored.import_ivf("s", saved)
    assert restored._scopes["s"].fast is None
    assert restored.search("s", vectors[7], 1)[0].entry_id == "id7"  # served meanwhile
    assert restored.maintain() == 1
    assert restored._scopes["s"].fast is not None
    assert restored.search("s", vectors[7], 1)[0].entry_id == "id7"
    assert restored.maintain() == 0


def _random_units(n: int, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def test_recall_queries_sit_between_the_floor_and_halfway_to_one() -> None:
    vectors = _random_units(2000, seed=11)
    for floor in (0.7, 0.92):
        queries = ivf_build.noisy(vectors, np.random.default_rng(2), floor)
        cosines = np.sum(queries * vectors, axis=1)
        assert cosines.min() >= floor - 1e-4 and cosines.max() <= (1 + floor) / 2 + 1e-4
        assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


def test_a_higher_floor_probes_fewer_lists_at_the_same_recall() -> None:
    """Unclustered vectors, where far queries need many lists: measured only down to the
    floor a search serves from, the same target needs fewer."""
    vectors = _random_units(8000, seed=12)
    chosen = {}
    for floor in (0.7, 0.92):
        index = FaissIndex(DIM, ivf_min=1000, background=False, recall_floor=floor)
        index.add_many("s", names(8000), vectors)
        index.maintain()
        st = index.stats()["s"]
        assert st.recall_at_1 is not None and st.recall_at_1 >= index.target_recall
        assert index._scopes["s"].floor == floor and index.summary()["recall_floor"] == floor
        chosen[floor] = st.nprobe
        # Held-out queries at the floor itself find their source about as often.
        queries = ivf_build.noisy(vectors[:300], np.random.default_rng(9), floor)
        found = sum(index.search("s", q, 1)[0].entry_id == f"id{i}" for i, q in enumerate(queries))
        assert found / 300 >= 0.97
    assert chosen[0.92] is not None and chosen[0.7] is not None
    assert chosen[0.92] < chosen[0.7] / 2


def test_a_scope_measured_down_to_a_higher_floor_is_rebuilt_for_a_lower_one() -> None:
    vectors = _random_units(3000, seed=13)
    strict = FaissIndex(DIM, ivf_min=1000, background=False, recall_floor=0.92)
    strict.add_many("s", names(3000), vectors)
    strict.maintain()
    saved = strict.export_ivf("s")
    assert saved is not None and saved.floor == 0.92
    # Into an index that serves from 0.92 or above, it is kept as it is...
    for floor, rebuilt in ((0.95, 0), (0.92, 0), (0.7, 1)):
        index = FaissIndex(DIM, ivf_min=1000, background=False, recall_floor=floor)
        index.import_ivf("s", saved)
        assert index.stats()["s"].nprobe == saved.nprobe  # served at once, as saved
        # ...into one that serves from lower, measured again down to its own floor.
        assert index.maintain() == rebuilt
        assert index._scopes["s"].floor == (saved.floor if not rebuilt else floor)
