"""Quota control through the real request path (in-process app, simulated upstream)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import pytest

from cache_service.quota.windows import window_reset_at
from cache_service.settings import ConfigError, Settings
from tests.conftest import Harness, harness
from tests.fakes import FakeClock, HashingEmbedder

FAST = {"backoff_base_s": 0.001}
# A fallback chain of two names for the one simulated upstream.
PRIMARY_AND_BACKUP = [
    {"name": "primary", "base_url": "http://sim/v1"},
    {"name": "backup", "base_url": "http://sim/v1"},
]


async def project_spend(h: Harness, project: str = "default") -> float:
    """Today's budget use of one project, as /v1/quota reports it."""
    quota = (await h.client.get("/v1/quota")).json()
    scope = next(s for s in quota["scopes"] if (s["kind"], s["name"]) == ("project", project))
    used: float = scope["daily_budget"]["used"]
    return used


async def test_burst_against_rpm_admits_exactly_the_limit(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(
        projects=[{"name": "default", "rpm": 10}], on_limit="queue", max_queue_wait_s=0.3, **FAST
    )
    async with harness(settings, embedder, clock) as h:
        responses = await asyncio.gather(*(h.chat(f"distinct question {i}") for i in range(100)))
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 10
        assert statuses.count(429) == 90
        assert await h.upstream_calls() == 10
        rejected = next(r for r in responses if r.status_code == 429)
        err = rejected.json()["error"]
        assert err["type"] == "rate_limit_error"
        assert err["code"] == "project_rpm_exceeded"
        assert "requests-per-minute" in err["message"]
        assert int(rejected.headers["retry-after"]) >= 1
        assert rejected.headers["x-cache"] == "MISS"
        assert rejected.headers["x-ratelimit-limit-requests"] == "10"
        assert rejected.headers["x-ratelimit-remaining-requests"] == "0"
        ok = next(r for r in responses if r.status_code == 200)
        assert ok.headers["x-ratelimit-limit-requests"] == "10"
        assert "x-ratelimit-remaining-requests" in ok.headers
        assert "x-ratelimit-reset-requests" in ok.headers
        metrics = (await h.client.get("/metrics")).text
        assert (
            'llm_cache_quota_rejections_total{limit="rpm",scope_kind="project",'
            'scope_name="default"} 90.0'
        ) in metrics
        # hits consume no quota: a cached question is still answered (which ten were
        # admitted depends on scheduling)
        answered = statuses.index(200)
        again = await h.chat(f"distinct question {answered}")
        assert again.status_code == 200
        assert again.headers["x-cache"] == "HIT"


async def test_reject_mode_answers_429_at_once(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(projects=[{"name": "default", "rpm": 2}], on_limit="reject")
    async with harness(settings, embedder, clock) as h:
        started = time.monotonic()
        codes = [(await h.chat(f"q{i}")).status_code for i in range(4)]
        assert codes == [200, 200, 429, 429]
        assert time.monotonic() - started < 2


async def test_queue_waits_for_room(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder
) -> None:
    from tests.fakes import FakeClock

    clock = FakeClock()
    settings = settings_factory(
        projects=[{"name": "default", "rpm": 1}], on_limit="queue", max_queue_wait_s=120
    )
    async with harness(settings, embedder, clock) as h:
        assert (await h.chat("first")).status_code == 200
        second = asyncio.create_task(h.chat("second"))
        await asyncio.sleep(0.2)
        assert not second.done()  # waiting in the queue, not rejected
        clock.advance(61)  # the rate window rolls over
        r = await asyncio.wait_for(second, 3)
        assert r.status_code == 200
        metrics = (await h.client.get("/metrics")).text
        assert 'llm_cache_quota_queue_wait_seconds_count{limit="any",project="default"} 1.0' in (
            metrics
        )


async def test_upstream_retry_after_is_honoured(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(**FAST), embedder, clock) as h:
        await h.faults("429", retry_after=2)
        started = time.monotonic()
        r = await h.chat("retry me")
        elapsed = time.monotonic() - started
        assert r.status_code == 200
        # The wait is the injected clock's: it moved by Retry-After, the test did not wait.
        assert clock.slept == [2.0]
        assert elapsed < 2.0
        assert await h.upstream_calls() == 2
        assert r.headers["x-upstream-attempts"] == "2"


async def test_budget_exhausted_rejects_misses_but_serves_hits(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    # $1 per 1000 tokens makes the arithmetic visible: each answer costs ~$0.05-0.15.
    settings = settings_factory(
        prices={"pricey": {"input": 1000, "output": 1000}},
        projects=[{"name": "default", "daily_budget_usd": 0.5}],
        on_limit="reject",
    )
    async with harness(settings, embedder, clock) as h:
        statuses = []
        for i in range(20):
            r = await h.chat(f"budget question {i}", model="pricey", max_tokens=200)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "project_daily_budget_exceeded"
                break
        assert statuses[0] == 200
        assert statuses[-1] == 429
        hit = await h.chat("budget question 0", model="pricey", max_tokens=200)
        assert hit.status_code == 200
        assert hit.headers["x-cache"] == "HIT"
        quota = (await h.client.get("/v1/quota")).json()
        project = next(s for s in quota["scopes"] if s["kind"] == "project")
        assert 0 < project["daily_budget"]["used"] <= 0.5


async def test_spend_survives_restart(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(projects=[{"name": "default", "daily_budget_usd": 10}])

    async with harness(settings, embedder, clock) as h:
        await h.chat("spend something")
        before = await project_spend(h)
        assert before > 0
    async with harness(settings, embedder, clock) as h:
        assert await project_spend(h) == pytest.approx(before)


async def test_requests_per_day_refuse_until_midnight_and_survive_restart(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(
        projects=[{"name": "default", "rpd": 2, "tpd": 100_000}], on_limit="queue"
    )
    midnight = window_reset_at("day", clock.now())

    async with harness(settings, embedder, clock) as h:
        assert [(await h.chat(f"daily {i}")).status_code for i in range(2)] == [200, 200]
        refused = await h.chat("daily 2")  # a wait until midnight is refused, not queued
        assert refused.status_code == 429
        err = refused.json()["error"]
        assert err["code"] == "project_rpd_exceeded"
        assert "requests-per-day" in err["message"]
        assert int(refused.headers["retry-after"]) == math.ceil(midnight - clock.now())
        quota = (await h.client.get("/v1/quota")).json()
        project = next(s for s in quota["scopes"] if s["kind"] == "project")
        assert project["daily_requests"]["used"] == 2
        assert project["daily_requests"]["limit"] == 2
        assert 0 < project["daily_tokens"]["used"] <= 100_000
    async with harness(settings, embedder, clock) as h:  # a restart does not reset the day
        assert (await h.chat("daily 3")).json()["error"]["code"] == "project_rpd_exceeded"
        clock.advance(midnight - clock.now())
        assert (await h.chat("daily 3")).status_code == 200


async def test_fallback_to_next_upstream_when_primary_fails(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(
        upstreams=PRIMARY_AND_BACKUP,
        max_retries=1,
        **FAST,
    )
    async with harness(settings, embedder, clock) as h:
        await h.faults("500", "500")  # the primary's call and its retry
        r = await h.chat("fall back please")
        assert r.status_code == 200
        assert r.headers["x-upstream"] == "backup"
        quota = (await h.client.get("/v1/quota")).json()
        assert quota["counters"]["fallbacks"] == 1
        assert quota["counters"]["retries"] == 1


async def test_admin_api_changes_limits_at_runtime(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(admin_key="s3cret", on_limit="reject")
    async with harness(settings, embedder, clock) as h:
        body = {"kind": "project", "name": "default", "rpm": 1}
        assert (await h.client.put("/v1/admin/limits", json=body)).status_code == 401
        bad = await h.client.put(
            "/v1/admin/limits", json=body, headers={"Authorization": "Bearer wrong"}
        )
        assert bad.status_code == 401
        ok = await h.client.put(
            "/v1/admin/limits", json=body, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        assert ok.json()["requests"]["limit"] == 1
        assert (await h.chat("one")).status_code == 200
        assert (await h.chat("two")).status_code == 429


async def test_per_day_limits_from_settings_and_admin_api(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    upstreams = [{"name": "primary", "base_url": "http://sim/v1", "rpd": 1000, "tpd": 50_000}]
    settings = settings_factory(upstreams=upstreams, admin_key="s3cret", on_limit="reject")
    async with harness(settings, embedder, clock) as h:
        quota = (await h.client.get("/v1/quota")).json()
        upstream = next(s for s in quota["scopes"] if s["kind"] == "upstream")
        assert (upstream["limits"]["rpd"], upstream["limits"]["tpd"]) == (1000, 50_000)
        assert upstream["daily_tokens"]["remaining"] == 50_000
        body = {"kind": "project", "name": "default", "rpd": 1, "tpd": 10_000}
        ok = await h.client.put(
            "/v1/admin/limits", json=body, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        assert ok.json()["daily_requests"]["limit"] == 1
        assert ok.json()["daily_tokens"]["limit"] == 10_000
        assert (await h.chat("one")).status_code == 200
        refused = await h.chat("two")
        assert refused.json()["error"]["code"] == "project_rpd_exceeded"


async def test_unknown_projects_get_default_limits_but_bounded_state(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(
        projects=[{"name": "default", "rpm": 1}], on_limit="reject", max_projects=2
    )
    async with harness(settings, embedder, clock) as h:

        async def ask(project: str, q: str) -> int:
            r = await h.chat(q, headers={"X-Project-Id": project})
            return r.status_code

        # a and b get scopes of their own, each with default's rpm of 1
        assert [await ask("a", "a1"), await ask("a", "a2")] == [200, 429]
        assert await ask("b", "b1") == 200
        # past max_projects, new names share the default scope
        assert await ask("c", "c1") == 200
        assert await ask("d", "d1") == 429
        quota = (await h.client.get("/v1/quota")).json()
        names = {s["name"] for s in quota["scopes"] if s["kind"] == "project"}
        assert names == {"a", "b", "default"}


async def test_budget_downgrade_and_alert_webhook(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict[str, object]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = settings_factory(
            prices={"pricey": {"input": 1000, "output": 1000}, "cheap": {"input": 1, "output": 1}},
            projects=[
                {
                    "name": "default",
                    "daily_budget_usd": 10,
                    "downgrade": {"at": 0.001, "model": "cheap"},
                }
            ],
            alerts={
                "thresholds": [0.001],
                "webhook_url": f"http://127.0.0.1:{server.server_port}/hook",
            },
        )
        async with harness(settings, embedder, clock) as h:
            first = await h.chat("first question", model="pricey", max_tokens=200)
            assert first.status_code == 200
            assert "x-model-downgraded" not in first.headers
            second = await h.chat("second question", model="pricey", max_tokens=200)
            assert second.headers["x-model-downgraded"] == "pricey -> cheap"
            assert second.json()["model"] == "cheap"
            assert second.headers["x-cache-stored"] == "false"  # not under pricey's scope
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.02)
        alerts = [a for a in received if a["scope_kind"] == "project"]
        assert len(alerts) == 1  # once per window per threshold, not per request
        assert alerts[0]["limit"] == "daily_budget"
    finally:
        server.shutdown()
        server.server_close()


async def test_open_breaker_sends_traffic_straight_to_the_fallback(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(
        upstreams=PRIMARY_AND_BACKUP,
        max_retries=0,
        breaker_failures=2,
        breaker_cooldown_s=30,
    )
    async with harness(settings, embedder, clock) as h:
        await h.faults("500", "ok", "500")  # each request: primary fails, backup answers
        for q in ("one", "two"):
            assert (await h.chat(q)).headers["x-upstream"] == "backup"
        calls = await h.upstream_calls()
        r = await h.chat("three")
        assert r.headers["x-upstream"] == "backup"
        assert await h.upstream_calls() == calls + 1  # the open primary was not tried
        quota = (await h.client.get("/v1/quota")).json()
        states = {u["name"]: u["breaker"] for u in quota["upstreams"]}
        assert states == {"primary": "open", "backup": "closed"}
        clock.advance(31)
        assert (await h.chat("four")).headers["x-upstream"] == "primary"  # the trial works
        states = {
            u["name"]: u["breaker"] for u in (await h.client.get("/v1/quota")).json()["upstreams"]
        }
        assert states["primary"] == "closed"


@pytest.mark.parametrize("default_price", [None, {"input": 1.0, "output": 2.0}])
async def test_unpriced_models(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    default_price: dict[str, float] | None,
) -> None:
    settings = settings_factory(
        projects=[{"name": "default", "daily_budget_usd": 10}], default_price=default_price
    )
    async with harness(settings, embedder, clock) as h:
        for i in range(2):
            r = await h.chat(f"local model question {i}", model="my-local-llama")
            assert r.status_code == 200
        used = await project_spend(h)
    warnings = [r for r in caplog.records if "has no price" in r.getMessage()]
    if default_price is None:
        assert used == 0.0
        assert len(warnings) == 1  # once per model, not per request
    else:
        assert used > 0
        assert warnings == []


async def test_unlisted_projects_can_be_refused(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(
        projects=[{"name": "team-a", "rpm": 100}], unlisted_projects="reject"
    )
    shared = {"X-Cache-Namespace": "shared"}
    async with harness(settings, embedder, clock) as h:
        a = await h.chat("what is our refund window?", headers={**shared, "X-Project-Id": "team-a"})
        assert a.status_code == 200
        stranger = await h.chat("another question", headers={**shared, "X-Project-Id": "team-b"})
        assert stranger.status_code == 403
        err = stranger.json()["error"]
        assert (err["type"], err["code"]) == ("permission_error", "unknown_project")
        assert "team-b" in err["message"]
        nameless = await h.chat("a third question", headers=shared)  # "default" is not listed
        assert nameless.status_code == 403
        # a hit reaches no upstream and spends nothing, so it is still served
        hit = await h.chat(
            "what is our refund window?", headers={**shared, "X-Project-Id": "team-b"}
        )
        assert hit.headers["x-cache"] == "HIT"
        assert await h.upstream_calls() == 1


def test_reject_needs_listed_projects(settings_factory: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="unlisted_projects"):
        settings_factory(unlisted_projects="reject")


async def test_a_failed_spend_snapshot_is_retried_and_loses_nothing(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(
        projects=[{"name": "default", "daily_budget_usd": 10}], spend_snapshot_interval_s=0.02
    )
    data = settings.data_dir
    blocker = data / "spend.json.tmp"  # a directory where the snapshot's temp file goes
    blocker.mkdir(parents=True)

    async with harness(settings, embedder, clock) as h:
        await h.chat("spend once")
        await asyncio.sleep(0.2)  # several snapshot attempts, all failing
        assert not (data / "spend.json").exists()
        assert list(data.glob("spend-journal.*"))
        blocker.rmdir()
        await h.chat("spend twice")
        for _ in range(250):
            if (data / "spend.json").exists():
                break
            await asyncio.sleep(0.02)
        assert (data / "spend.json").exists()  # the snapshot task survived its failures
        before = await project_spend(h)
    async with harness(settings, embedder, clock) as h:
        assert await project_spend(h) == pytest.approx(before)


async def test_failed_calls_do_not_grow_the_spend_journal(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(spend_snapshot_interval_s=0.02, max_retries=0, **FAST)
    async with harness(settings, embedder, clock) as h:
        await h.faults(*["500"] * 5)
        for i in range(5):
            assert (await h.chat(f"failing question {i}")).status_code == 500
        for _ in range(250):  # each hold and its release are dropped by the next snapshot
            journal = sum(p.stat().st_size for p in settings.data_dir.glob("spend-journal.*"))
            if journal == 0:
                break
            await asyncio.sleep(0.02)
        assert journal == 0
        assert await project_spend(h) == 0.0


async def test_a_downgraded_call_is_reported_at_the_price_it_was_charged(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    # Cost is computed once, at the model actually called: stats, metrics and the budget
    # agree (they had reported the requested model's price for a downgraded call).
    settings = settings_factory(
        prices={"pricey": {"input": 1000, "output": 1000}, "cheap": {"input": 1, "output": 1}},
        projects=[
            {
                "name": "default",
                "daily_budget_usd": 1000,
                "downgrade": {"at": 1e-6, "model": "cheap"},
            }
        ],
    )
    async with harness(settings, embedder, clock) as h:
        await h.chat("first question", model="pricey", max_tokens=50)
        before = await project_spend(h)
        second = await h.chat("second question", model="pricey", max_tokens=50)
        assert second.headers["x-model-downgraded"] == "pricey -> cheap"
        usage = second.json()["usage"]
        cheap_cost = (usage["prompt_tokens"] + usage["completion_tokens"]) / 1e6
        charged = await project_spend(h)
        assert charged - before == pytest.approx(cheap_cost)
        stats = (await h.client.get("/v1/cache/stats")).json()["total"]
        assert stats["dollars_spent"] == pytest.approx(charged)
        metrics = (await h.client.get("/metrics")).text
        spent = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("llm_cache_dollars_spent_total")
        )
        assert spent == pytest.approx(charged)


async def test_no_path_leaks_a_quota_hold(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(
        projects=[{"name": "default", "rpm": 1000, "daily_budget_usd": 100}], **FAST
    )
    async with harness(settings, embedder, clock) as h:
        assert (await h.chat("answered")).status_code == 200
        assert (await h.chat("answered", stream=True)).headers["x-cache"] == "HIT"
        assert (await h.chat("streamed", stream=True)).status_code == 200
        await h.faults("500", "500", "500", "500", retry_after=0)
        assert (await h.chat("fails every time")).status_code == 500
        await h.faults("429", "429", "429", "429", retry_after=0)
        assert (await h.chat("limited every time", stream=True)).status_code == 429
        await h.faults("drop")
        await h.chat("dropped mid-stream", stream=True)
        assert (await h.client.get("/v1/models")).status_code == 200
        quota = (await h.client.get("/v1/quota")).json()
        assert quota["in_flight"] == 0
        project = next(
            s for s in quota["scopes"] if (s["kind"], s["name"]) == ("project", "default")
        )
        assert project["daily_budget"]["held"] == 0
        assert project["daily_tokens"]["held"] == 0
