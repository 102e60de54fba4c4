"""Feedback and audits through the real request path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from cache_service.cache.feedback import FeedbackLearner
from cache_service.settings import Settings
from tests.conftest import harness
from tests.fakes import FakeClock, HashingEmbedder

Q = "How do I reset my password?"
PARAPHRASE = "how do I reset my password"


def test_learner_raises_on_corroborated_wrong_and_relaxes_on_right() -> None:
    learner = FeedbackLearner(0.9)
    assert learner.threshold("a") == 0.9
    # One report is weak evidence: held, not acted on.
    assert learner.record("a", 0.95, correct=False) == 0.9
    assert learner.pending == {"a": [0.95]}
    assert learner.threshold("b") == 0.9  # other namespaces untouched
    # Corroborated: half way from 0.9 toward just above the lowest fooling similarity (0.935),
    # not all the way above the highest (the old rule would have jumped to 0.955).
    assert learner.record("a", 0.93, correct=False) == pytest.approx(0.9175)
    assert learner.pending == {}  # evidence consumed: the next step needs fresh reports
    assert learner.record("a", 0.91, correct=False) == pytest.approx(0.9175)  # already below
    assert learner.pending == {}  # and not held either
    assert learner.record("a", 0.99, correct=True) == pytest.approx(0.9165)
    assert learner.record("a", None, correct=False) == pytest.approx(0.9165)  # exact: no signal
    assert learner.record("a", 0.96, correct=False) == pytest.approx(0.9165)  # pending again
    restored = FeedbackLearner(0.9)
    restored.load(learner.export())
    assert restored.threshold("a") == pytest.approx(0.9165)
    assert restored.counts["a"] == {"correct": 1, "wrong": 5}
    assert restored.pending == {"a": [0.96]}


def test_repeated_evidence_converges_on_the_fooling_similarity_without_passing_it() -> None:
    learner = FeedbackLearner(0.8)
    seen = []
    for _ in range(20):
        learner.record("a", 0.9, correct=False)
        seen.append(learner.record("a", 0.9, correct=False))
    assert seen == sorted(seen) and seen[0] == pytest.approx(0.8525)
    assert 0.9 < seen[-1] <= 0.905  # only just above what fooled it, never the ceiling
    learner2 = FeedbackLearner(0.9)
    for _ in range(50):
        learner2.record("b", 1.0, correct=False)
    assert learner2.threshold("b") <= 0.995  # the ceiling holds


def test_feedback_files_from_before_corroboration_still_load() -> None:
    old = {"thresholds": {"a": 0.955, "low": 0.85}, "counts": {"a": {"correct": 0, "wrong": 1}}}
    learner = FeedbackLearner(0.9)
    learner.load(old)
    assert learner.threshold("a") == 0.955 and learner.threshold("low") == 0.9
    assert learner.pending == {}
    assert learner.record("a", 0.97, correct=False) == 0.955  # held: needs a second report


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
        # One report: the bad entry goes at once, the namespace threshold waits for a second.
        assert body["namespace_threshold"] == 0.92
        assert (await h.chat(PARAPHRASE)).headers["x-cache"] == "MISS"
        stats = (await h.client.get("/v1/cache/stats")).json()
        assert stats["quality"]["learned_thresholds"] == {}
        assert stats["quality"]["pending_wrong_reports"] == {"anonymous": 1}
        assert stats["quality"]["feedback"]["anonymous"] == {"correct": 0, "wrong": 1}
        # A second wrong hit (similarity 1.0 with the hashing embedder) corroborates it: the
        # threshold moves half way toward just above it (0.92 -> 0.9575), not to 0.995.
        again = await h.chat(PARAPHRASE + "!!")
        assert again.headers["x-cache-match"] == "semantic"
        r = await h.client.post(
            "/v1/cache/feedback",
            json={"request_id": again.headers["x-request-id"], "correct": False},
        )
        assert r.json()["namespace_threshold"] == pytest.approx(0.9575)
        stats = (await h.client.get("/v1/cache/stats")).json()
        assert stats["quality"]["learned_thresholds"]["anonymous"] == pytest.approx(0.9575)
        assert stats["quality"]["feedback"]["anonymous"] == {"correct": 0, "wrong": 2}
        unknown = await h.client.post(
            "/v1/cache/feedback", json={"request_id": "nope", "correct": True}
        )
        assert unknown.status_code == 404
        both = await h.client.post("/v1/cache/feedback", json={"correct": True})
        assert both.status_code == 400


async def test_audit_samples_hits_and_estimates_precision(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(audit_sample_rate=1.0)
    async with harness(settings, embedder, clock) as h:
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
    # Saved to audit.json (for the report CLI): a restart starts from it.
    saved = json.loads((settings.data_dir / "audit.json").read_text())
    assert saved == audit
    async with harness(settings, embedder, clock) as h:
        again = (await h.client.get("/v1/cache/stats")).json()["quality"]["audit"]
        assert again == audit
