"""The cross-encoder verifier: threshold choice from the calibration table, verdicts from a
fake pair model (accept, refuse, time out, fail), and the lookup flow through CacheFront
with a cosine floor below the similarity threshold."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.store import DiskCacheStore
from cache_service.cache.batcher import EmbeddingBatcher
from cache_service.cache.cross_encoder import (
    CrossEncoderVerifier,
    choose_floor,
    choose_threshold,
)
from cache_service.cache.feedback import FeedbackLearner
from cache_service.cache.front import CacheFront
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.keys import RequestKeys, build_keys
from cache_service.cache.matching import Candidate
from cache_service.cache.semantic import SemanticCache
from cache_service.pricing import Usage
from cache_service.protocols import Entry
from cache_service.settings import ConfigError, load_settings
from tests.fakes import FakeClock, FakePairScorer, HashingEmbedder

CALIBRATION = {
    "threshold": 0.6,
    "floor": 0.75,
    "calibration": [
        {"threshold": 0.3, "wrong_share": 0.12},
        {"threshold": 0.5, "wrong_share": 0.05},
        {"threshold": 0.7, "wrong_share": 0.02},
        {"threshold": 0.9, "wrong_share": 0.01},
    ],
}


# --- choosing the threshold


def test_without_bound_or_override_the_manifest_default_is_used() -> None:
    assert choose_threshold(CALIBRATION, error_bound=None, override=None) == 0.6


def test_an_error_bound_picks_the_loosest_threshold_that_meets_it() -> None:
    assert choose_threshold(CALIBRATION, error_bound=0.05, override=None) == 0.5
    assert choose_threshold(CALIBRATION, error_bound=0.04, override=None) == 0.7
    assert choose_threshold(CALIBRATION, error_bound=0.5, override=None) == 0.3
    # Unreachable: the strictest calibrated threshold, the closest the model can come.
    assert choose_threshold(CALIBRATION, error_bound=0.001, override=None) == 0.9


def test_the_calibration_table_need_not_arrive_sorted() -> None:
    shuffled = {**CALIBRATION, "calibration": list(reversed(CALIBRATION["calibration"]))}  # type: ignore[call-overload]
    assert choose_threshold(shuffled, error_bound=0.05, override=None) == 0.5


def test_an_explicit_threshold_wins_over_bound_and_default() -> None:
    assert choose_threshold(CALIBRATION, error_bound=0.05, override=0.42) == 0.42
    assert choose_threshold(CALIBRATION, error_bound=None, override=0.0) == 0.0


def test_a_bound_without_a_table_falls_back_to_the_default() -> None:
    assert choose_threshold({"threshold": 0.6}, error_bound=0.05, override=None) == 0.6


def test_the_floor_comes_from_the_manifest_unless_overridden() -> None:
    assert choose_floor(CALIBRATION, None) == 0.75
    assert choose_floor(CALIBRATION, 0.8) == 0.8


@pytest.mark.parametrize(
    "bad",
    [
        {"verifier_error_bound": 1.5},
        {"verifier_error_bound": -0.1},
        {"verifier_threshold": 2},
        {"verifier_floor": 0},
        {"verifier_timeout_ms": 0},
        {"verifier": "maybe"},
    ],
)
def test_bad_verifier_settings_are_config_errors(bad: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        load_settings(None, data_dir=tmp_path, **bad)


# --- verdicts


def candidate(prompt: str, similarity: float = 0.8) -> Candidate:
    entry = Entry(prompt, "s", prompt, "ns", "m", prompt, None, "{}", 0.0, None)
    return Candidate(entry, similarity)


def verifier(scorer: Any, *, threshold: float = 0.5, timeout_s: float = 5) -> CrossEncoderVerifier:
    return CrossEncoderVerifier(scorer, threshold=threshold, floor=0.5, timeout_s=timeout_s)


async def test_pairs_are_judged_best_first_until_one_reaches_the_threshold() -> None:
    scores = {"good": 0.9, "edge": 0.5, "bad": 0.2, "late": 0.95}
    scorer = FakePairScorer(lambda stored, new: scores[stored])
    v = verifier(scorer)
    try:
        # Below the threshold is refused; at it is accepted; after an acceptance nothing
        # more is judged (the chain serves the first survivor).
        verdicts = await v.verify("q", [candidate("bad"), candidate("edge"), candidate("good")])
        assert [(x.accepted, x.reason) for x in verdicts] == [
            (False, "verifier"),
            (True, "ok"),
            (False, "verifier_skipped"),
        ]
        # (stored, new) order: the model was trained on it; one pass per pair.
        assert scorer.pairs == [("bad", "q"), ("edge", "q")]
        assert (v.judged, v.accepted, v.refused, v.timeouts, v.errors) == (2, 1, 1, 0, 0)
        assert v.stats()["verifier_threshold"] == 0.5
        # At most max_pairs (2) are judged: a third candidate is refused unjudged.
        verdicts = await v.verify("q", [candidate("bad"), candidate("bad"), candidate("late")])
        assert [x.reason for x in verdicts] == ["verifier", "verifier", "verifier_skipped"]
        assert len(scorer.pairs) == 4 and ("late", "q") not in scorer.pairs
    finally:
        v.close()


class Blocking:
    """A model stuck until released: every pair misses its deadline."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.manifest: dict[str, Any] = {"threshold": 0.5, "floor": 0.5}

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.release.wait(5)
        return [1.0 for _ in pairs]


async def test_a_model_too_slow_for_the_deadline_refuses_fail_closed() -> None:
    scorer = Blocking()
    v = verifier(scorer, timeout_s=0.05)
    try:
        verdicts = await v.verify("q", [candidate("a"), candidate("b")])
        assert [(x.accepted, x.reason) for x in verdicts] == [(False, "verifier_timeout")] * 2
        # The second pair was queued behind the stuck first one, or shed at the door.
        assert (v.judged, v.accepted, v.timeouts) == (2, 0, 2)
        # Still stuck: the next lookup is refused at admission (shed), also as a timeout.
        v.batcher.per_input_s = 1.0
        verdicts = await v.verify("q2", [candidate("c")])
        assert verdicts[0].reason == "verifier_timeout"
        assert v.timeouts == 3 and v.shed >= 1
    finally:
        scorer.release.set()
        v.close()


class Broken:
    def __init__(self) -> None:
        self.manifest: dict[str, Any] = {"threshold": 0.5, "floor": 0.5}

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        raise RuntimeError("onnx session died")


async def test_a_failing_model_refuses_every_candidate_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    v = verifier(Broken())
    try:
        verdicts = await v.verify("q", [candidate("a"), candidate("b")])
        assert [(x.accepted, x.reason) for x in verdicts] == [(False, "verifier_error")] * 2
        assert (v.errors, v.accepted) == (1, 0)
        assert sum("verifier model failed" in r.message for r in caplog.records) == 1
    finally:
        v.close()


# --- the lookup flow: floor, verifier, exact hits

STORED = "how do i reset my password"
PARAPHRASE = "how can i reset my password"  # HashingEmbedder cosine 0.875: under 0.92
UNRELATED = "what is the weather in paris"


def keys(text: str) -> RequestKeys:
    return build_keys({"model": "m", "messages": [{"role": "user", "content": text}]}, "ns")


@dataclass
class Rig:
    front: CacheFront
    scorer: FakePairScorer
    verifier: CrossEncoderVerifier
    verdict: dict[str, float]


@contextlib.asynccontextmanager
async def chain(
    path: Path, scorer: FakePairScorer, *, guards: bool = True
) -> AsyncIterator[tuple[CacheFront, CrossEncoderVerifier]]:
    """The serving chain as the app builds it: floor 0.6, threshold 0.92, a verifier at 0.5."""
    embedder = HashingEmbedder()
    cache = SemanticCache(
        DiskCacheStore(path),
        FaissIndex(embedder.dim),
        FakeClock(),
        AcceptConfig(0.92, guards=guards),
    )
    cache.rebuild()
    batcher = EmbeddingBatcher(embedder)
    v = CrossEncoderVerifier(scorer, threshold=0.5, floor=0.6, timeout_s=5)
    front = CacheFront(
        cache,
        batcher,
        FeedbackLearner(0.6),
        embed_timeout_s=5,
        default_ttl_s=60,
        verifiers=[v],
        floor=v.floor,
    )
    try:
        yield front, v
    finally:
        v.close()
        batcher.close()
        cache.store.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    verdict = {"p": 0.9}
    scorer = FakePairScorer(lambda stored, new: verdict["p"])
    async with chain(tmp_path / "s", scorer) as (front, v):
        await front.store(keys(STORED), {"answer": 1}, api="openai", ttl_s=None, usage=Usage(1, 1))
        yield Rig(front, scorer, v, verdict)


async def test_a_candidate_between_floor_and_threshold_is_served_when_the_verifier_says_so(
    rig: Rig,
) -> None:
    found = await rig.front.lookup(keys(PARAPHRASE), None, {})
    assert found.hit is not None and found.hit.match == "semantic"
    assert found.hit.similarity is not None and 0.6 <= found.hit.similarity < 0.92
    assert rig.scorer.pairs == [(STORED, PARAPHRASE)]


async def test_it_is_a_miss_naming_the_verifier_when_the_verifier_says_no(rig: Rig) -> None:
    rig.verdict["p"] = 0.1
    found = await rig.front.lookup(keys(PARAPHRASE), None, {})
    assert found.hit is None
    assert found.searched is not None and found.searched.reason == "verifier"
    assert rig.verifier.refused == 1


async def test_no_candidate_above_the_floor_never_calls_the_verifier(rig: Rig) -> None:
    found = await rig.front.lookup(keys(UNRELATED), None, {})
    assert found.hit is None and rig.scorer.batches == []
    assert rig.verifier.judged == 0


async def test_an_exact_hit_never_calls_the_verifier(rig: Rig) -> None:
    found = await rig.front.lookup(keys(STORED), None, {})
    assert found.hit is not None and found.hit.match == "exact"
    assert rig.scorer.batches == []


async def test_a_callers_or_learned_threshold_still_bounds_the_search(rig: Rig) -> None:
    # The caller asked for 0.95, above the operator's 0.92: the 0.875 paraphrase is never
    # judged.
    found = await rig.front.lookup(keys(PARAPHRASE), 0.95, {})
    assert found.hit is None and rig.scorer.batches == []
    # The default threshold asked for explicitly changes nothing: the verifier still judges.
    found = await rig.front.lookup(keys(PARAPHRASE), 0.92, {})
    assert found.hit is not None and len(rig.scorer.batches) == 1
    # Feedback taught the namespace 0.9 (it was served wrong answers there).
    rig.front.learner.thresholds["ns"] = 0.9
    found = await rig.front.lookup(keys(PARAPHRASE), None, {})
    assert found.hit is None and len(rig.scorer.batches) == 1


def test_search_threshold_is_the_floor_raised_by_request_or_learned(tmp_path: Path) -> None:
    cache = SemanticCache(
        DiskCacheStore(tmp_path / "s"), FaissIndex(8), FakeClock(), AcceptConfig(0.92)
    )
    front = CacheFront(
        cache,
        None,  # type: ignore[arg-type]
        FeedbackLearner(0.75),
        embed_timeout_s=1,
        default_ttl_s=1,
        verifiers=[object()],  # type: ignore[list-item]
        floor=0.75,
    )
    try:
        assert front.search_threshold(None, 0.75) == 0.75
        assert front.search_threshold(0.95, 0.75) == 0.95  # raised above 0.92: it holds
        # At or below the operator's threshold it asks for nothing the verifier lacks.
        assert front.search_threshold(0.92, 0.75) == 0.75
        assert front.search_threshold(0.8, 0.75) == 0.75
        assert front.search_threshold(None, 0.85) == 0.85  # learned
        assert front.search_threshold(0.95, 0.85) == 0.95
        assert front.search_threshold(0.92, 0.94) == 0.94
    finally:
        cache.store.close()


NUMBERED = "reset my password within 2 days"
OTHER_NUMBER = "reset my password within 3 days"


async def test_guards_run_before_the_verifier_unless_switched_off(tmp_path: Path) -> None:
    for guards in (True, False):
        scorer = FakePairScorer(lambda stored, new: 0.9)
        async with chain(tmp_path / str(guards), scorer, guards=guards) as (front, _):
            await front.store(keys(NUMBERED), {"a": 1}, api="openai", ttl_s=None, usage=Usage(1, 1))
            found = await front.lookup(keys(OTHER_NUMBER), None, {})
            if guards:
                # The numbers guard refused it cheaply; the model never saw it.
                assert found.hit is None and scorer.batches == []
                assert found.searched is not None and found.searched.reason == "numbers_differ"
            else:
                assert found.hit is not None and scorer.pairs == [(NUMBERED, OTHER_NUMBER)]


async def test_the_verifier_is_not_a_timing_hazard_for_the_event_loop() -> None:
    # The model runs in the verifier's own thread: the loop keeps ticking while it works.
    scorer = Blocking()
    v = verifier(scorer, timeout_s=1)
    try:
        task = asyncio.create_task(v.verify("q", [candidate("a")]))
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        scorer.release.set()
        assert (await task)[0].accepted and ticks == 5
    finally:
        scorer.release.set()
        v.close()
