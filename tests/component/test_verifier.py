"""The cross-encoder verifier through the HTTP request path, with a fake pair model: a
paraphrase below the similarity threshold but above the floor is served when the model says
yes, a miss naming the verifier when it says no, and the verifier's counters show."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from cache_service.preflight import StartupError, check_verifier
from cache_service.settings import Settings
from tests.conftest import harness
from tests.fakes import FakeClock, FakePairScorer, HashingEmbedder

Q = "how do i reset my password"
PARAPHRASE = "how can i reset my password"  # HashingEmbedder cosine 0.875 < 0.92


async def test_a_paraphrase_under_the_threshold_is_a_hit_when_the_verifier_agrees(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    scorer = FakePairScorer(lambda stored, new: 0.97, threshold=0.5, floor=0.7)
    async with harness(settings_factory(verifier="on"), embedder, clock, pair_scorer=scorer) as h:
        assert (await h.chat(Q)).headers["x-cache"] == "MISS"
        hit = await h.chat(PARAPHRASE)
        assert hit.headers["x-cache"] == "HIT"
        assert hit.headers["x-cache-match"] == "semantic"
        assert scorer.pairs == [(Q, PARAPHRASE)]
        assert await h.upstream_calls() == 1
        cache = (await h.client.get("/v1/cache/stats")).json()["cache"]
        assert cache["verifier"] == "cross_encoder"
        assert (cache["verifier_threshold"], cache["verifier_floor"]) == (0.5, 0.7)
        assert (cache["verifier_judged"], cache["verifier_accepted"]) == (1, 1)
        metrics = (await h.client.get("/metrics")).text
        assert 'llm_cache_verifier_verdicts_total{verdict="accepted"} 1.0' in metrics
        assert "llm_cache_verifier_floor 0.7" in metrics


async def test_it_is_a_miss_naming_the_verifier_when_the_verifier_disagrees(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    scorer = FakePairScorer(lambda stored, new: 0.03, threshold=0.5, floor=0.7)
    async with harness(settings_factory(verifier="on"), embedder, clock, pair_scorer=scorer) as h:
        await h.chat(Q)
        miss = await h.chat(PARAPHRASE)
        assert miss.headers["x-cache"] == "MISS"
        assert miss.headers["x-cache-rejected-by"] == "verifier"
        assert float(miss.headers["x-cache-best-similarity"]) == pytest.approx(0.875, abs=1e-3)
        assert await h.upstream_calls() == 2
        cache = (await h.client.get("/v1/cache/stats")).json()["cache"]
        assert (cache["verifier_refused"], cache["verifier_accepted"]) == (1, 0)


class Stuck(FakePairScorer):
    def __init__(self) -> None:
        super().__init__(threshold=0.5, floor=0.7)
        self.release = threading.Event()

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.release.wait(5)
        return super().score(pairs)


async def test_a_verifier_past_its_deadline_is_a_miss_not_a_hit(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    scorer = Stuck()
    settings = settings_factory(verifier="on", verifier_timeout_ms=50)
    try:
        async with harness(settings, embedder, clock, pair_scorer=scorer) as h:
            await h.chat(Q)
            miss = await h.chat(PARAPHRASE)
            assert miss.headers["x-cache"] == "MISS"
            assert miss.headers["x-cache-rejected-by"] == "verifier_timeout"
            cache = (await h.client.get("/v1/cache/stats")).json()["cache"]
            assert cache["verifier_timeouts"] == 1
            scorer.release.set()
    finally:
        scorer.release.set()


async def test_without_a_verifier_the_same_paraphrase_is_below_threshold(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    # Verifier off (auto and no model directory): the similarity threshold decides alone.
    settings = settings_factory(verifier_dir=Path("/nonexistent/verifier"))
    async with harness(settings, embedder, clock) as h:
        await h.chat(Q)
        miss = await h.chat(PARAPHRASE)
        assert miss.headers["x-cache-rejected-by"] == "below_threshold"
        assert (await h.client.get("/v1/cache/stats")).json()["cache"]["verifier"] == "off"


def test_verifier_on_without_a_usable_model_directory_is_a_startup_error(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    model_dir = tmp_path / "verifier"
    with pytest.raises(StartupError, match=r"no .*manifest\.json"):
        check_verifier(settings_factory(verifier="on", verifier_dir=model_dir))
    check_verifier(settings_factory(verifier="auto", verifier_dir=model_dir))  # off: fine
    model_dir.mkdir()
    (model_dir / "manifest.json").write_text('{"onnx_file": "model.onnx", "threshold": 0.5}')
    # auto with a manifest present: the operator shipped a model, so it must be whole.
    with pytest.raises(StartupError, match=r"tokenizer\.json"):
        check_verifier(settings_factory(verifier="auto", verifier_dir=model_dir))
    (model_dir / "tokenizer.json").write_text("{}")
    (model_dir / "model.onnx").write_bytes(b"")
    with pytest.raises(StartupError, match="floor"):
        check_verifier(settings_factory(verifier="on", verifier_dir=model_dir))
    check_verifier(settings_factory(verifier="on", verifier_dir=model_dir, verifier_floor=0.8))
    (model_dir / "manifest.json").write_text("not json")
    with pytest.raises(StartupError, match="unreadable manifest"):
        check_verifier(settings_factory(verifier="on", verifier_dir=model_dir))
