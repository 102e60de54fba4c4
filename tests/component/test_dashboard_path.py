"""The dashboard's server side: GET /v1/cache/recent (rows, miss reasons, top entries), the
stats filters it sends, and who may read them."""

from __future__ import annotations

import asyncio
import re
from base64 import b64encode
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cache_service.settings import Settings
from cache_service.telemetry.outcome_log import OutcomeLog, read_outcomes
from tests.conftest import harness
from tests.fakes import FakeClock, HashingEmbedder, write_old_outcome_log

ADMIN = {"X-Admin-Key": "adm"}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


async def test_recent_rows_reasons_and_top_entries(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(admin_key="adm", log_prompts=True)
    async with harness(settings, embedder, clock) as h:
        await h.chat("How do I reset my password?", headers={"X-Cache-Namespace": "alpha"})
        exact = await h.chat("How do I reset my password?", headers={"X-Cache-Namespace": "alpha"})
        await h.chat("how do I reset my password", headers={"X-Cache-Namespace": "alpha"})
        await h.chat("What is the capital of France?", headers={"X-Cache-Namespace": "beta"})
        await h.chat("unrelated", headers={"Cache-Control": "no-store"})

        r = await h.client.get("/v1/cache/recent", headers=ADMIN)
        assert r.status_code == 200, r.text
        body = r.json()
        rows = body["requests"]
        assert [x["outcome"] for x in rows] == [
            "bypass", "miss", "semantic_hit", "exact_hit", "miss",
        ]  # fmt: skip
        bypass, miss_b, semantic, hit, miss_a = rows
        assert hit["entry_id"] and hit["entry_id"] == semantic["entry_id"]
        assert miss_b["namespace"] == "anonymous/beta" and miss_b["entry_id"] is None
        assert hit["similarity"] == 1.0 and 0 < semantic["similarity"] < 1
        assert hit["rejected_by"] is None and bypass["rejected_by"] is None
        assert miss_a["rejected_by"] in ("no_candidates", "below_threshold")
        assert miss_a["dollars_spent"] > 0 and hit["dollars_saved"] > 0
        assert hit["namespace"] == "anonymous/alpha" and hit["model"] == "gpt-4o-mini"
        assert miss_a["prompt"] == "How do I reset my password?"  # log_prompts is on
        assert exact.headers["x-cache"] == "HIT"
        assert sum(body["miss_reasons"].values()) == 2
        assert body["top_entries"][0]["entry_id"] == hit["entry_id"]
        assert body["top_entries"][0]["hits"] == 2
        series = body["series"]
        assert sum(b["requests"] for b in series) == 5
        assert sum(b["hits"] for b in series) == 2
        assert sum(b["dollars_saved"] for b in series) == sum(x["dollars_saved"] for x in rows)

        # Filters and limit.
        r = await h.client.get(
            "/v1/cache/recent",
            params={"namespace": "anonymous/beta", "limit": 5},
            headers=ADMIN,
        )
        assert [x["outcome"] for x in r.json()["requests"]] == ["miss"]
        assert r.json()["top_entries"] == []
        r = await h.client.get("/v1/cache/recent", params={"limit": 2}, headers=ADMIN)
        assert len(r.json()["requests"]) == 2

        # A caller without the admin key sees only its own tenant's rows.
        other = await h.client.get("/v1/cache/recent", headers={"Authorization": "Bearer k"})
        assert other.status_code == 200 and other.json()["requests"] == []
        anon = await h.client.get("/v1/cache/recent")
        assert len(anon.json()["requests"]) == 5


async def test_a_hit_refused_for_its_age_is_a_max_age_miss(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(), embedder, clock) as h:
        await h.chat("How do I reset my password?")
        clock.advance(100)
        stale = await h.chat("How do I reset my password?", headers={"Cache-Control": "max-age=50"})
        assert stale.headers["x-cache"] != "HIT"
        rows = (await h.client.get("/v1/cache/recent")).json()["requests"]
        assert [(x["outcome"], x["rejected_by"]) for x in rows] == [
            ("miss", "max_age"),
            ("miss", "no_candidates"),
        ]


async def test_without_the_outcome_log_the_log_filters_are_refused(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(outcome_log=False), embedder, clock) as h:
        assert (await h.client.get("/v1/cache/recent")).status_code == 400
        assert (await h.client.get("/v1/cache/stats", params={"since": "1h"})).status_code == 400
        live = await h.client.get("/v1/cache/stats", params={"model": "gpt-4o"})
        assert live.status_code == 200  # the live counters need no log


async def test_prompts_stay_out_unless_logged(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(), embedder, clock) as h:
        await h.chat("a secret prompt")
        body = (await h.client.get("/v1/cache/recent")).json()
        assert body["log_prompts"] is False
        assert "prompt" not in body["requests"][0]


async def test_stats_filters(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(admin_key="adm"), embedder, clock) as h:
        await h.chat("How do I reset my password?", headers={"X-Cache-Namespace": "alpha"})
        await h.chat("How do I reset my password?", headers={"X-Cache-Namespace": "alpha"})
        start = clock.now()
        clock.advance(3600)
        await h.chat("What is the capital of France?", headers={"X-Project-Id": "web"})
        await h.chat("What is the capital of France?", headers={"X-Project-Id": "web"})
        await h.chat("What is the capital of France?", model="gpt-4o")

        async def get(**params: str) -> httpx.Response:
            return await h.client.get("/v1/cache/stats", params=params, headers=ADMIN)

        everything = (await get()).json()
        assert everything["total"]["requests"] == 5
        assert "filters" not in everything

        ns = (await get(namespace="anonymous/alpha")).json()
        assert ns["total"]["requests"] == 2 and ns["total"]["exact_hits"] == 1
        assert list(ns["by_namespace"]) == ["anonymous/alpha"]
        assert ns["filters"] == {"namespace": "anonymous/alpha"}

        model = (await get(model="gpt-4o")).json()
        assert model["total"]["requests"] == 1 and model["total"]["misses"] == 1

        # Time and project rebuild the figures from the outcome log.
        later = (await get(since=iso(start + 1))).json()
        assert later["total"]["requests"] == 3
        earlier = (await get(until=iso(start + 1))).json()
        assert earlier["total"] == ns["total"]
        web = (await get(project="web")).json()
        assert web["total"]["requests"] == 2 and web["total"]["exact_hits"] == 1
        # The log's figures for everything equal the live counters.
        assert (await get(since=iso(0))).json()["total"] == everything["total"]

        bad = await get(since="yesterday")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
        fleet = await get(since="1h", scope="fleet")
        assert fleet.status_code == 400


async def test_admin_only_ops_guards_the_dashboard(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(admin_key="adm", admin_only_ops=True)
    async with harness(settings, embedder, clock) as h:
        for path in ("/dashboard", "/v1/cache/recent", "/v1/quota"):
            assert (await h.client.get(path)).status_code == 401, path
            wrong = await h.client.get(path, headers={"X-Admin-Key": "nope"})
            assert wrong.status_code == 401, path
            assert (await h.client.get(path, headers=ADMIN)).status_code == 200, path
            basic = {"Authorization": "Basic " + b64encode(b"anyone:adm").decode()}
            assert (await h.client.get(path, headers=basic)).status_code == 200, path
        # A browser is asked for the key (HTTP Basic: any user name, the key as password).
        refused = await h.client.get("/dashboard")
        assert refused.headers["www-authenticate"].startswith("Basic ")
        for credentials in (b"adm:nope", b"adm", b"\xff:adm"):
            auth = {"Authorization": "Basic " + b64encode(credentials).decode()}
            assert (await h.client.get("/dashboard", headers=auth)).status_code == 401, credentials
        garbled = await h.client.get("/dashboard", headers={"Authorization": "Basic !!"})
        assert garbled.status_code == 401
        await h.chat("hello", headers={"Authorization": "Bearer k"})
        basic = {"Authorization": "Basic " + b64encode(b":adm").decode()}
        seen = (await h.client.get("/v1/cache/stats", headers=basic)).json()
        assert seen["total"]["requests"] == 1  # the admin's view: every tenant's
    async with harness(settings_factory(admin_only_ops=True), embedder, clock) as h:
        # admin_only_ops without an admin key: refused, never open.
        assert (await h.client.get("/dashboard")).status_code == 403


async def test_the_page_loads_nothing_from_elsewhere(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(), embedder, clock) as h:
        r = await h.client.get("/dashboard")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["content-security-policy"]
        page = r.text
        # No attribute names a resource but the empty favicon (no request for one).
        named = re.findall(r'\b(?:src|href)\s*=\s*"[^"]*"', page)
        assert named == ['href="data:,"']
        assert "@import" not in page and "url(" not in page
        # The one absolute URL is the SVG namespace, an identifier never fetched.
        urls = set(re.findall(r"https?://[^\s\"']+", page))
        assert urls == {"http://www.w3.org/2000/svg"}
        for endpoint in ("/v1/cache/stats", "/v1/quota", "/v1/cache/recent"):
            assert endpoint in page


def test_a_log_from_before_the_new_columns_opens_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    write_old_outcome_log(path)
    old = read_outcomes(path)  # read-only, before any writer added the columns
    assert len(old) == 1 and old[0].rejected_by is None and old[0].entry_id is None
    with OutcomeLog.open(path, retention_days=1e6) as log:
        [event] = log.query()
        assert event.request_id == "r1" and event.rejected_by is None
    assert len(read_outcomes(path)) == 1


async def test_time_saved_and_the_size_history_in_the_stats(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(admin_key="adm", sweep_interval_s=0.02)
    async with harness(settings, embedder, clock) as h:
        # A hit of an entry stored through the cache API: no miss of its model seen yet.
        stored = await h.client.post(
            "/v1/cache/store", json={"model": "m", "prompt": "p", "response": {"text": "a"}}
        )
        assert stored.status_code == 201
        lookup = await h.client.post("/v1/cache/lookup", json={"model": "m", "prompt": "p"})
        assert lookup.json()["hit"] is True
        # A lookup's miss never went upstream: it does not count as a miss's latency.
        await h.client.post("/v1/cache/lookup", json={"model": "gpt-4o-mini", "prompt": "q"})
        await h.chat("How do I reset my password?")
        await h.chat("How do I reset my password?")
        await h.chat("how do I reset my password")

        stats = (await h.client.get("/v1/cache/stats", headers=ADMIN)).json()
        rows = (await h.client.get("/v1/cache/recent", headers=ADMIN)).json()["requests"]
        [miss] = [r for r in rows if r["outcome"] == "miss" and r["upstream_status"] == 200]
        hits = [r for r in rows if r["model"] == "gpt-4o-mini" and r["entry_id"]]
        assert len(hits) == 2
        expected = sum(max(0.0, miss["latency_ms"] - r["latency_ms"]) for r in hits)
        by_model = stats["by_model"]
        assert by_model["gpt-4o-mini"]["time_saved_ms"] == pytest.approx(expected, abs=0.01)
        assert by_model["gpt-4o-mini"]["hits_unestimated"] == 0
        assert by_model["m"]["hits_unestimated"] == 1 and by_model["m"]["time_saved_ms"] == 0
        assert stats["total"]["time_saved_ms"] == by_model["gpt-4o-mini"]["time_saved_ms"]

        # The sweeps feed the size history: two entries now (the stored one, the miss's).
        for _ in range(200):
            history = (await h.client.get("/v1/cache/stats")).json()["size_history"]
            if history["samples"] and history["samples"][-1]["entries"] == 2:
                break
            await asyncio.sleep(0.02)
        last = history["samples"][-1]
        assert (last["entries"], last["evicted"], history["evicted_in_range"]) == (2, 0, 0)
        assert last["store_bytes"] > 0 and history["since_start"] <= last["time"]
        # The time range applies to it as to the figures.
        later = await h.client.get("/v1/cache/stats", params={"since": iso(clock.now() + 1)})
        assert later.json()["size_history"]["samples"] == []
