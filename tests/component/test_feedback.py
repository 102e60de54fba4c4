"""Feedback and audits through the real request path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cache_service.cache.feedback import FeedbackLearner
from cache_service.settings import Settings
from tests.conftest import harness
from tests.fakes import FakeClock, HashingEmbedder

Q = "How do I reset my password?"
PARAPHRASE = "how do I reset my password"


def test_learner_raises_on_wrong_and_relaxes_on_right() -> None:
    learner = FeedbackLearner(0.9)
    assert learner.threshold("a") == 0.9
    assert learner.record("a", 0.95, correct=False) == 0.955
    assert learner.threshold("b") == 0.9  # other namespaces untouched
    assert learner.record("a", 0.93, correct=False) == 0.955  # already stricter than that
    assert learner.record("a", 0.99, correct=True) == 0.954
    assert learner.record("a", None, correct=False) == 0.954  # exact hit: no signal
    restored = FeedbackLearner(0.9)
    restored.load(learner.export())
    assert restored.threshold("a") == 0.954
    assert restored.counts["a"] == {"correct": 1, "wrong": 3}


async def test_wrong_feedback_invalidates_and_tightens(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(), embedder, clock) as h:
        await h.chat(Q)
        hit = await h.chat(PARAPHRASE)
        assert hit.headers["x-cache-match"] == "semantic"
        r = await h.client.post(
            "/v1/cache/feedback",
            json={"request_id": hit.headers["x-request-id"], "correct": False},
        )
        body = r.json()
        assert body["invalidated"] is True
        assert body["entry_id"] == hit.headers["x-cache-entry"]
        assert body["namespace_threshold"] > 0.99  # above the similarity that fooled it
        assert (await h.chat(PARAPHRASE)).headers["x-cache"] == "MISS"
        stats = (await h.client.get("/v1/cache/stats")).json()
        assert stats["quality"]["learned_thresholds"]["anonymous"] > 0.99
        assert stats["quality"]["feedback"]["anonymous"] == {"correct": 0, "wrong": 1}
        unknown = await h.client.post(
            "/v1/cache/feedback", json={"request_id": "nope", "correct": True}
        )
        assert unknown.status_code == 404
        both = await h.client.post("/v1/cache/feedback", json={"correct": True})
        assert both.status_code == 400


async def test_audit_samples_hits_and_estimates_precision(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(audit_sample_rate=1.0), embedder, clock) as h:
        await h.chat(Q)
        hit = await h.chat(PARAPHRASE)
        assert hit.headers["x-cache-match"] == "semantic"
        for _ in range(500):  # the audit runs in the background, after the hit was served
            audit = (await h.client.get("/v1/cache/stats")).json()["quality"]["audit"]
            if audit["audited"]:
                break
            await asyncio.sleep(0.02)
        assert audit["audited"] == 1
        # the simulated upstream answers each wording differently: the audit notices
        assert audit["estimated_precision"] in (0.0, 1.0)
        assert await h.upstream_calls() == 2
        metrics = (await h.client.get("/metrics")).text
        verdicts = [
            line for line in metrics.splitlines() if line.startswith("llm_cache_audits_total")
        ]
        assert len(verdicts) == 1
        assert verdicts[0].endswith(" 1.0")
