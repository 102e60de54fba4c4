"""A store past its size limit evicts its oldest entries: never silently. The sweep counts
them, stats report the store's fill, metrics its limit, and the operator is warned."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from cache_service.settings import Settings
from tests.conftest import harness
from tests.fakes import FakeClock, HashingEmbedder


async def test_evictions_are_counted_and_the_operator_warned(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_factory(store_size_limit_bytes=1024**2, sweep_interval_s=0.05)
    big = "x" * 40_000
    async with harness(settings, embedder, clock) as h:
        for i in range(60):  # ~2.4 MB into a 1 MiB store
            r = await h.client.post(
                "/v1/cache/store",
                json={"model": "m", "prompt": f"question {i}", "response": {"text": big}},
            )
            assert r.status_code == 201
        cache: dict[str, Any] = {}
        for _ in range(200):
            await asyncio.sleep(0.05)
            stats = (await h.client.get("/v1/cache/stats")).json()
            cache = stats["cache"]
            if cache["evicted"]:
                break
        assert cache["evicted"] > 0
        # The size history was fed by the same sweeps: its last sample is the store now.
        history = stats["size_history"]
        last = history["samples"][-1]
        assert last["evicted"] == history["evicted_in_range"] == cache["evicted"]
        assert last["store_bytes"] == cache["store_bytes"]
        assert 0 < last["entries"] < 60
        assert cache["store_limit_bytes"] == 1024**2
        assert cache["index"]["ivf_min_recall_at_1"] is None  # small scopes: exact search
        assert 0 < cache["store_fill"] <= 1.2
        assert any("store_size_limit_bytes" in r.getMessage() for r in caplog.records)
        metrics = (await h.client.get("/metrics")).text
        assert "llm_cache_bytes_limit 1.048576e+06" in metrics
        evicted = next(
            line for line in metrics.splitlines() if line.startswith("llm_cache_evicted_total")
        )
        # The sweep runs every 50 ms meanwhile: the counter lies between the two stats reads.
        later = (await h.client.get("/v1/cache/stats")).json()["cache"]["evicted"]
        assert cache["evicted"] <= float(evicted.split()[1]) <= later
        # Evicted entries are gone, not served: the oldest is a miss now.
        lookup = await h.client.post(
            "/v1/cache/lookup", json={"model": "m", "prompt": "question 0"}
        )
        assert lookup.json()["hit"] is False


@pytest.fixture(autouse=True)
def _warnings_captured(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cache_service")
