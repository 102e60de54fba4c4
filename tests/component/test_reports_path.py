"""After real requests through the app: /metrics moves by the right amounts and the report
agrees with /v1/cache/stats."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from cache_service.settings import Settings
from tests.conftest import harness
from tests.fakes import FakeClock, HashingEmbedder


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_metrics_and_report_follow_real_requests(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(), embedder, clock) as h:
        miss = await h.chat("How do I reset my password?")
        await h.chat("How do I reset my password?")
        await h.chat("how do I reset my password")
        await h.chat("unrelated question", headers={"Cache-Control": "no-store"})
        usage = miss.json()["usage"]

        text = (await h.client.get("/metrics")).text
        requests = samples(text, "llm_cache_requests_total")
        by_outcome = {dict(k)["outcome"]: v for k, v in requests.items()}
        assert by_outcome == {"miss": 1, "exact_hit": 1, "semantic_hit": 1, "bypass": 1}
        saved = samples(text, "llm_cache_tokens_saved_total")
        by_kind = {dict(k)["kind"]: v for k, v in saved.items()}
        assert by_kind["prompt"] == 2 * usage["prompt_tokens"]
        assert by_kind["completion"] == 2 * usage["completion_tokens"]
        stages = samples(text, "llm_cache_lookup_stage_seconds_count")
        by_stage = {dict(k)["stage"]: v for k, v in stages.items()}
        assert by_stage["exact"] == 4 - 1  # every lookup but the no-store bypass
        assert by_stage["embed"] == by_stage["search"] == by_stage["verify"] == 2
        calls = samples(text, "llm_cache_upstream_requests_total")
        assert sum(calls.values()) == 2

        stats = (await h.client.get("/v1/cache/stats")).json()["total"]
        report = (await h.client.get("/v1/cache/report", params={"format": "json"})).json()
        totals = report["totals"]
        for key in ("requests", "exact_hits", "semantic_hits", "misses", "bypasses"):
            assert totals[key] == stats[key], key
        assert totals["dollars_saved"] == stats["dollars_saved"]

        html = (await h.client.get("/v1/cache/report", params={"format": "html"})).text
        pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
        assert pngs
        assert all(base64.b64decode(p).startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)


async def test_stats_survive_a_restart(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory()
    async with harness(settings, embedder, clock) as h:
        await h.chat("How do I reset my password?")
        await h.chat("How do I reset my password?")
        before = (await h.client.get("/v1/cache/stats")).json()
    async with harness(settings, embedder, clock) as h:
        after = (await h.client.get("/v1/cache/stats")).json()
        assert after["total"] == before["total"]
        assert after["total"]["requests"] == 2
        assert after["by_namespace"] == before["by_namespace"]


async def test_label_values_from_requests_are_capped(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(max_label_values=2, admin_key="adm")
    # "_other" belongs to no one tenant: only the admin's view shows it.
    admin = {"X-Admin-Key": "adm"}
    async with harness(settings, embedder, clock) as h:
        for ns in ("alpha", "beta", "gamma", "delta"):
            await h.chat("How do I reset my password?", headers={"X-Cache-Namespace": ns})
        stats = (await h.client.get("/v1/cache/stats", headers=admin)).json()
        assert sorted(stats["by_namespace"]) == ["_other", "anonymous/alpha", "anonymous/beta"]
        assert stats["by_namespace"]["_other"]["requests"] == 2
        assert stats["total"]["requests"] == 4
        metrics = (await h.client.get("/metrics")).text
        namespaces = set(re.findall(r'llm_cache_requests_total\{[^}]*namespace="([^"]+)"', metrics))
        assert namespaces == {"anonymous/alpha", "anonymous/beta", "_other"}
    async with harness(settings, embedder, clock) as h:  # restored rows keep their names
        await h.chat("How do I reset my password?", headers={"X-Cache-Namespace": "beta"})
        await h.chat("How do I reset my password?", headers={"X-Cache-Namespace": "epsilon"})
        stats = (await h.client.get("/v1/cache/stats", headers=admin)).json()
        assert stats["by_namespace"]["anonymous/beta"]["requests"] == 2
        assert stats["by_namespace"]["_other"]["requests"] == 3
