"""The matching chain: threshold and guards in the search, then verifiers behind one
protocol, each able only to refuse; and the generic model batcher they may share."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from cache_service.backends.faiss_index import FaissIndex
from cache_service.backends.store import DiskCacheStore
from cache_service.cache.batcher import (
    ADMIT_FRACTION,
    EmbeddingBatcher,
    ModelBatcher,
    ModelBusy,
)
from cache_service.cache.feedback import FeedbackLearner
from cache_service.cache.front import CacheFront
from cache_service.cache.guards import AcceptConfig
from cache_service.cache.keys import RequestKeys, build_keys
from cache_service.cache.matching import Candidate, Verdict, choose
from cache_service.cache.semantic import SemanticCache
from cache_service.pricing import Usage
from cache_service.protocols import Entry
from tests.fakes import FakeClock, HashingEmbedder


class Refuses:
    """A verifier refusing the prompts it is told to, recording what it was shown."""

    def __init__(self, name: str, refused: set[str]) -> None:
        self.name = name
        self.refused = refused
        self.shown: list[list[str]] = []

    async def verify(self, prompt: str, candidates: Sequence[Candidate]) -> list[Verdict]:
        self.shown.append([c.entry.prompt for c in candidates])
        return [
            Verdict(False, self.name) if c.entry.prompt in self.refused else Verdict(True)
            for c in candidates
        ]


def candidate(prompt: str, similarity: float) -> Candidate:
    entry = Entry(prompt, "s", prompt, "ns", "m", prompt, None, "{}", 0.0, None)
    return Candidate(entry, similarity)


async def test_the_first_candidate_every_verifier_accepts_wins() -> None:
    a, b, c = candidate("a", 0.99), candidate("b", 0.97), candidate("c", 0.95)
    first, second = Refuses("first", {"a"}), Refuses("second", {"b"})
    chosen = await choose("q", [a, b, c], [first, second])
    assert chosen.candidate is c
    assert (chosen.best_rejected, chosen.reason) == (0.99, "ok")  # a hit: nothing refused it
    # Each verifier judges only what the ones before it let through.
    assert first.shown == [["a", "b", "c"]] and second.shown == [["b", "c"]]


async def test_when_every_candidate_is_refused_it_is_a_miss_naming_the_refusal() -> None:
    chosen = await choose("q", [candidate("a", 0.96)], [Refuses("nli", {"a"})])
    assert (chosen.candidate, chosen.best_rejected, chosen.reason) == (None, 0.96, "nli")


async def test_no_verifiers_serve_the_best_candidate() -> None:
    a = candidate("a", 0.99)
    assert (await choose("q", [a, candidate("b", 0.9)], [])).candidate is a


async def test_a_verifier_in_the_front_turns_a_guarded_hit_into_a_miss(tmp_path: Path) -> None:
    clock, embedder = FakeClock(), HashingEmbedder()
    cache = SemanticCache(
        DiskCacheStore(tmp_path / "s"), FaissIndex(embedder.dim), clock, AcceptConfig(0.5)
    )
    cache.rebuild()
    batcher = EmbeddingBatcher(embedder)
    verifier = Refuses("verifier", {"how do i reset my password"})
    front = CacheFront(
        cache,
        batcher,
        FeedbackLearner(0.5),
        embed_timeout_s=5,
        default_ttl_s=60,
        verifiers=[verifier],
    )

    def keys(text: str) -> RequestKeys:
        body = {"model": "m", "messages": [{"role": "user", "content": text}]}
        return build_keys(body, "ns")

    try:
        stored = keys("how do i reset my password")
        await front.store(stored, {"answer": 1}, api="openai", ttl_s=None, usage=Usage(1, 1))
        stages: dict[str, float] = {}
        found = await front.lookup(keys("how can i reset my password"), None, stages)
        assert found.hit is None
        assert found.searched is not None and found.searched.reason == "verifier"
        assert "verify" in stages
        verifier.refused.clear()
        found = await front.lookup(keys("how can i reset my password"), None, {})
        assert found.hit is not None and found.hit.match == "semantic"
        # An exact match is served before any model runs.
        verifier.shown.clear()
        found = await front.lookup(stored, None, {})
        assert found.hit is not None and found.hit.match == "exact" and verifier.shown == []
    finally:
        batcher.close()
        cache.store.close()


async def test_the_model_batcher_batches_concurrent_calls_for_any_model() -> None:
    calls: list[list[str]] = []

    def model(batch: list[str]) -> list[int]:
        calls.append(batch)
        return [len(x) for x in batch]

    batcher: ModelBatcher[str, int] = ModelBatcher(model, max_batch=8, name="lengths")
    try:
        results = await asyncio.gather(*(batcher.run("x" * i, 5) for i in range(10)))
        assert results == list(range(10))
        assert sum(len(b) for b in calls) == 10
        assert all(len(b) <= 8 for b in calls)
        assert len(calls) < 10  # what queued while a pass ran went as one batch
        assert (batcher.batches, batcher.processed) == (len(calls), 10)
    finally:
        batcher.close()


async def test_the_model_batcher_passes_on_failures_and_deadlines() -> None:
    def broken(batch: list[str]) -> list[int]:
        raise ValueError("model failed")

    batcher: ModelBatcher[str, int] = ModelBatcher(broken)
    try:
        with pytest.raises(ValueError, match="model failed"):
            await batcher.run("x", 5)
    finally:
        batcher.close()

    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(batch: list[str]) -> list[int]:
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
        return [0 for _ in batch]

    batcher = ModelBatcher(slow)
    try:
        with pytest.raises(TimeoutError):
            await batcher.run("x", 0.05)
    finally:
        gate.set()
        batcher.close()


async def test_an_input_whose_caller_gave_up_is_never_computed() -> None:
    # Under overload, a lookup past its deadline must shed its model work, not queue it.
    seen: list[list[str]] = []
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def model(batch: list[str]) -> list[int]:
        seen.append(batch)
        if batch == ["first"]:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
        return [0 for _ in batch]

    batcher: ModelBatcher[str, int] = ModelBatcher(model)
    try:
        first = asyncio.create_task(batcher.run("first", 5))
        await asyncio.sleep(0.05)  # the model is busy with it
        with pytest.raises(TimeoutError):
            await batcher.run("late", 0.05)
        gate.set()
        assert await first == 0
        await asyncio.sleep(0.05)
        assert seen == [["first"]]
        assert batcher.processed == 1
    finally:
        gate.set()
        batcher.close()


async def test_a_store_after_an_overloaded_lookup_does_not_embed(tmp_path: Path) -> None:
    clock, embedder = FakeClock(), HashingEmbedder()
    cache = SemanticCache(
        DiskCacheStore(tmp_path / "s"), FaissIndex(embedder.dim), clock, AcceptConfig(0.5)
    )
    cache.rebuild()
    batcher = EmbeddingBatcher(embedder)
    front = CacheFront(cache, batcher, FeedbackLearner(0.5), embed_timeout_s=5, default_ttl_s=60)
    body = {"model": "m", "messages": [{"role": "user", "content": "reset my password"}]}
    keys = build_keys(body, "ns")
    try:
        entry = await front.store(
            keys, {"a": 1}, api="openai", ttl_s=None, usage=Usage(1, 1), embed=False
        )
        assert entry is not None and entry.embedding is None  # exact matches only
        assert embedder.calls == 0
        assert (await front.lookup(keys, None, {})).hit is not None
    finally:
        batcher.close()
        cache.store.close()


async def test_an_input_that_would_outwait_its_deadline_is_refused_at_admission() -> None:
    # Overload policy: the queue's expected wait (inputs ahead x measured cost per input)
    # over ADMIT_FRACTION of the caller's deadline refuses the input at once, before it
    # joins the queue.
    seen: list[list[str]] = []
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def model(batch: list[str]) -> list[int]:
        seen.append(batch)
        if batch == ["busy"]:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
        time.sleep(0.05 * len(batch))
        return [0 for _ in batch]

    batcher: ModelBatcher[str, int] = ModelBatcher(model)
    try:
        assert await batcher.run("measure", 5) == 0  # learns ~50 ms per input
        assert batcher.per_input_s >= 0.05
        # Idle: admitted whatever the measured cost, since only a queue is evidence.
        assert await batcher.run("idle", 0.15) == 0
        busy = asyncio.create_task(batcher.run("busy", 5))
        await asyncio.sleep(0.02)
        # One running, this one next: ~100 ms expected, over 0.8 of 120 ms.
        assert 0.12 * ADMIT_FRACTION < 0.1
        with pytest.raises(ModelBusy):
            await batcher.run("refused", 0.12)
        assert batcher.shed == 1
        # A caller with time to spare still queues behind the busy one.
        patient = asyncio.create_task(batcher.run("patient", 5))
        gate.set()
        assert (await busy, await patient) == (0, 0)
        assert ["refused"] not in seen and all("refused" not in b for b in seen)
        assert batcher.processed == 4
    finally:
        gate.set()
        batcher.close()


async def test_the_model_takes_its_next_batch_without_waiting_for_the_loop() -> None:
    # A busy event loop must not leave the model idle with inputs queued.
    release = threading.Event()
    starts: list[tuple[float, list[str]]] = []

    def model(batch: list[str]) -> list[int]:
        starts.append((time.monotonic(), list(batch)))
        if batch == ["first"]:
            release.wait(5)
        return [len(x) for x in batch]

    batcher: ModelBatcher[str, int] = ModelBatcher(model)
    try:
        first = asyncio.create_task(batcher.run("first", 5))
        await asyncio.sleep(0.05)  # the model is on "first"
        rest = [asyncio.create_task(batcher.run(x, 5)) for x in ("bb", "ccc")]
        await asyncio.sleep(0.01)  # both queued
        release.set()
        blocked_at = time.monotonic()
        time.sleep(0.3)  # noqa: ASYNC251 (the point: the loop is busy and hands out nothing)
        assert [batch for _, batch in starts] == [["first"], ["bb", "ccc"]]
        assert starts[1][0] < blocked_at + 0.3
        assert await first == 5 and [await t for t in rest] == [2, 3]
    finally:
        release.set()
        batcher.close()


async def test_closing_fails_what_is_still_queued_and_refuses_more() -> None:
    release = threading.Event()

    def model(batch: list[str]) -> list[int]:
        release.wait(5)
        return [0 for _ in batch]

    batcher: ModelBatcher[str, int] = ModelBatcher(model, name="pairs")
    try:
        first = asyncio.create_task(batcher.run("first", 5))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.run("queued", 5))
        await asyncio.sleep(0.01)
        batcher.close()
        # Refused as a timeout, what every caller already handles (a lookup fails open).
        with pytest.raises(ModelBusy, match="pairs batcher closed"):
            await queued
        release.set()
        assert await first == 0  # the pass under way still answers
        with pytest.raises(ModelBusy, match="closed"):
            await batcher.run("after", 5)
    finally:
        release.set()
        batcher.close()


async def test_a_model_answering_the_wrong_number_of_outputs_fails_its_callers() -> None:
    batcher: ModelBatcher[str, int] = ModelBatcher(lambda batch: [1, 2, 3])
    try:
        with pytest.raises(RuntimeError, match="1 inputs gave 3 outputs"):
            await batcher.run("x", 5)
        assert batcher.processed == 0
    finally:
        batcher.close()


async def test_work_beside_the_model_runs_while_it_computes_and_only_when_idle() -> None:
    side_done = threading.Event()
    busy_started = threading.Event()
    finish = threading.Event()

    def model(batch: list[str]) -> list[int]:
        if batch == ["first"]:
            # Finishes only if the side work ran while the model computed, not after.
            assert side_done.wait(5)
        if batch == ["busy"]:
            busy_started.set()
            finish.wait(5)
        return [len(x) for x in batch]

    batcher: ModelBatcher[str, int] = ModelBatcher(model)
    try:
        assert await batcher.run("first", 5, meanwhile=side_done.set) == 5

        # The model is computing another input: this thread is the other callers', and the
        # side work is left for later.
        busy = asyncio.create_task(batcher.run("busy", 5))
        assert await asyncio.to_thread(busy_started.wait, 5)
        skipped: list[int] = []
        queued = asyncio.create_task(batcher.run("queued", 5, meanwhile=lambda: skipped.append(1)))
        await asyncio.sleep(0.05)
        finish.set()
        assert (await busy, await queued) == (4, 6)
        assert skipped == []

        def broken() -> None:
            raise RuntimeError("side work failed")

        # A failure in the side work is not the lookup's: the input is computed all the same.
        assert await batcher.run("x", 5, meanwhile=broken) == 1
    finally:
        finish.set()
        batcher.close()
