"""After real requests through the app: /metrics moves by the right amounts and the report
agrees with /v1/cache/stats."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cache_service.report.cli import run_cli
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


async def test_report_tuning_sections_and_the_cli_from_the_same_data_dir(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Miss reasons and top entries agree with GET /v1/cache/recent, quality with the stats,
    the threshold is the configured one; then the CLI, from the files the sidecar left,
    shows the same sections and the same budgets (only the audit tally, kept in memory, is
    missing there, and says so)."""
    settings = settings_factory(
        admin_key="adm",
        audit_sample_rate=1.0,
        projects=[{"name": "proj-a", "daily_budget_usd": 5.0}],
    )
    admin = {"X-Admin-Key": "adm", "X-Project-Id": "proj-a"}
    async with harness(settings, embedder, clock) as h:
        await h.chat("How do I reset my password?", headers=admin)
        await h.chat("How do I reset my password?", headers=admin)
        hit = await h.chat("how do I reset my password", headers=admin)
        assert hit.headers["x-cache-match"] == "semantic"
        await h.chat("What is the capital of France?", headers=admin)
        r = await h.client.post(
            "/v1/cache/feedback",
            json={"request_id": hit.headers["x-request-id"], "correct": False},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        for _ in range(500):  # the audit runs in the background, after the hit was served
            stats = (await h.client.get("/v1/cache/stats", headers=admin)).json()
            if stats["quality"]["audit"]["audited"]:
                break
            await asyncio.sleep(0.02)

        recent = (await h.client.get("/v1/cache/recent", headers=admin)).json()
        report = (
            await h.client.get("/v1/cache/report", params={"format": "json"}, headers=admin)
        ).json()
        reasons = {r["reason"]: r["misses"] for r in report["miss_reasons"]["reasons"]}
        assert reasons == recent["miss_reasons"]
        assert report["miss_reasons"]["misses"] == report["totals"]["misses"] == 2
        [top] = report["top_entries"]
        assert (
            top["entry_id"] == hit.headers["x-cache-entry"] == recent["top_entries"][0]["entry_id"]
        )
        assert top["hits"] == 2
        usage = hit.json()["usage"]
        assert top["tokens_saved"] == 2 * (usage["prompt_tokens"] + usage["completion_tokens"])
        assert top["dollars_saved"] == pytest.approx(report["totals"]["dollars_saved"])
        assert report["quality"] == stats["quality"]
        assert report["quality"]["audit"]["audited"] == 1
        assert list(report["quality"]["feedback"].values()) == [{"correct": 0, "wrong": 1}]
        assert report["similarity"]["threshold"] == settings.similarity_threshold == 0.92
        budget = report["budgets"][0]
        assert (budget["project"], budget["window"], budget["limit_usd"]) == ("proj-a", "daily", 5)
        # The misses, and the audit's own upstream call: both are spend.
        assert budget["used_usd"] > report["totals"]["dollars_spent"] > 0
        assert report["unavailable"] == {}

        md = (await h.client.get("/v1/cache/report", params={"format": "md"}, headers=admin)).text
        for title in ("## Miss reasons (2 misses)", "## Top entries", "## Quality: audits",
                      "## Quality: feedback", "## Similarity (similarity threshold 0.9200)",
                      "## Budget use"):  # fmt: skip
            assert title in md, title

        # A tenant's own report: no budgets (they span tenants), and it says why.
        own = await h.client.get("/v1/cache/report", headers={"Authorization": "Bearer k"})
        assert "budgets" not in own.json() and "admin" in own.json()["unavailable"]["budgets"]
        assert own.json()["miss_reasons"]["misses"] == 0 and own.json()["top_entries"] == []

    # The CLI, after the sidecar stopped, from its data_dir and the same config.
    log_path = settings.data_dir / "outcomes.sqlite3"
    assert run_cli(log_path, since=None, fmt="json", out=None, settings=settings,
                   now=clock.now()) == 0  # fmt: skip
    cli = json.loads(capsys.readouterr().out)
    assert "budgets" in cli, cli["unavailable"]
    for key in ("totals", "miss_reasons", "top_entries", "budgets"):
        assert cli[key] == report[key], (key, cli["unavailable"])
    assert cli["similarity"]["threshold"] == 0.92
    # The audit tally too: the server wrote it to audit.json.
    assert cli["quality"]["audit"] == report["quality"]["audit"]
    assert cli["quality"]["audit"]["audited"] == 1
    assert cli["quality"]["feedback"] == report["quality"]["feedback"]
    assert cli["unavailable"] == {}
    assert run_cli(log_path, since=None, fmt="md", out=None, settings=settings,
                   now=clock.now()) == 0  # fmt: skip
    md = capsys.readouterr().out
    assert "## Budget use" in md and "| proj-a | daily |" in md
    assert "## Quality: audits" in md and "## Not in this report" not in md
