from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cache_service.quota.limits import Limits
from cache_service.quota.manager import QuotaManager, Reservation
from cache_service.quota.usage import QuotaSnapshot
from cache_service.telemetry.events import OutcomeEvent, StageTimer, split_cost
from cache_service.telemetry.hub import Telemetry
from cache_service.telemetry.metrics import Metrics
from cache_service.telemetry.outcome_log import OutcomeLog, read_outcomes
from cache_service.telemetry.quota_view import budgets_of
from cache_service.telemetry.stats import OTHER, LabelCap, Outcome
from tests.fakes import FakeClock

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def event(
    outcome: Outcome,
    *,
    t: float = 1_795_000_000.0,
    ns: str = "team-a",
    project: str = "proj-a",
    model: str = "gpt-4o-mini",
    p: int = 100,
    c: int = 50,
    dollars: float = 0.001,
    **kw: object,
) -> OutcomeEvent:
    saved, spent = split_cost(outcome, dollars)
    fields: dict[str, object] = {
        "time": t,
        "request_id": f"req-{t}-{outcome.value}",
        "namespace": ns,
        "project": project,
        "model": model,
        "outcome": outcome,
        "prompt_tokens": p,
        "completion_tokens": c,
        "dollars_saved": saved,
        "dollars_spent": spent,
        "latency_ms": 5.0,
    }
    fields.update(kw)
    return OutcomeEvent(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ metrics


def test_metrics_move_by_the_right_amounts() -> None:
    m = Metrics()
    who = {"namespace": "team-a", "project": "proj-a", "model": "gpt-4o-mini"}
    events = [
        event(Outcome.EXACT_HIT, similarity=1.0, stages={"exact": 0.5}),
        event(
            Outcome.SEMANTIC_HIT,
            p=200,
            c=80,
            dollars=0.002,
            similarity=0.91,
            best_rejected=0.88,
            stages={"exact": 0.4, "embed": 12.0, "search": 0.3, "verify": 0.2},
        ),
        event(Outcome.MISS, p=300, c=100, dollars=0.004, best_rejected=0.7, latency_ms=800.0),
        event(Outcome.BYPASS, p=10, c=5, dollars=0.0001),
        event(Outcome.ERROR, p=0, c=0, dollars=0.0, upstream_status=502),
        event(Outcome.MISS, ns="team-b", embed_timeout=True),
    ]
    for e in events:
        m.observe(e)
    s = scrape(m)

    for outcome, n in (("exact_hit", 1), ("semantic_hit", 1), ("miss", 1), ("bypass", 1)):
        assert value(s, "llm_cache_requests_total", **who, outcome=outcome) == n
    assert value(s, "llm_cache_requests_total", **who, outcome="error") == 1
    assert (
        value(s, "llm_cache_requests_total", **{**who, "namespace": "team-b"}, outcome="miss") == 1
    )
    # Saved on hits only; spent on misses and bypasses only; nothing for errors.
    assert value(s, "llm_cache_tokens_saved_total", **who, kind="prompt") == 300
    assert value(s, "llm_cache_tokens_saved_total", **who, kind="completion") == 130
    assert value(s, "llm_cache_dollars_saved_total", **who) == pytest.approx(0.003)
    assert value(s, "llm_cache_upstream_tokens_total", **who, kind="prompt") == 310
    assert value(s, "llm_cache_dollars_spent_total", **who) == pytest.approx(0.0041)
    # Served similarity counts semantic hits only (exact hits are 1.0 by definition).
    assert value(s, "llm_cache_similarity_count", kind="served") == 1
    assert value(s, "llm_cache_similarity_sum", kind="served") == pytest.approx(0.91)
    assert value(s, "llm_cache_similarity_bucket", kind="served", le="0.9") == 0
    assert value(s, "llm_cache_similarity_bucket", kind="served", le="0.92") == 1
    assert value(s, "llm_cache_similarity_count", kind="best_rejected") == 2
    assert value(s, "llm_cache_similarity_sum", kind="best_rejected") == pytest.approx(1.58)
    assert value(s, "llm_cache_lookup_stage_seconds_count", stage="exact") == 2
    assert value(s, "llm_cache_lookup_stage_seconds_sum", stage="embed") == pytest.approx(0.012)
    assert value(s, "llm_cache_lookup_stage_seconds_count", stage="verify") == 1
    assert value(s, "llm_cache_request_latency_seconds_count", outcome="miss") == 2
    assert value(s, "llm_cache_request_latency_seconds_sum", outcome="miss") == pytest.approx(0.805)
    assert value(s, "llm_cache_request_latency_seconds_bucket", outcome="miss", le="0.5") == 1
    assert value(s, "llm_cache_embed_timeouts_total", namespace="team-b", model="gpt-4o-mini") == 1


def test_upstream_quota_and_cache_metrics() -> None:
    m = Metrics()
    m.upstream_call("openai", 200, 0.4)
    m.upstream_call("openai", 200, 0.6)
    m.upstream_call("openai", 429, 0.1)
    m.upstream_call("openai", None, 5.0)
    m.retry("openai", "429")
    m.fallback("openai", "azure")
    m.quota_rejection("project", "proj-a", "rpm")
    m.quota_rejection("project", "proj-a", "rpm")
    m.queue_wait("proj-a", 0.3, limit="tpm")
    m.set_budget("proj-a", "daily", 4.0, 5.0)
    m.set_budget("proj-b", "monthly", 1.0, None)
    m.set_remaining("project", "proj-a", 12, None)
    m.expired(3)
    m.evicted(2)
    m.evicted(0)
    sizes = iter([(10, 4096), (11, 5000)])
    m.cache_size_callback(lambda: next(sizes))
    s = scrape(m)

    assert value(s, "llm_cache_upstream_requests_total", upstream="openai", status="200") == 2
    assert value(s, "llm_cache_upstream_requests_total", upstream="openai", status="429") == 1
    assert value(s, "llm_cache_upstream_requests_total", upstream="openai", status="error") == 1
    assert value(s, "llm_cache_upstream_latency_seconds_count", upstream="openai") == 4
    assert value(s, "llm_cache_upstream_latency_seconds_sum", upstream="openai") == pytest.approx(
        6.1
    )
    assert value(s, "llm_cache_upstream_retries_total", upstream="openai", reason="429") == 1
    assert value(s, "llm_cache_upstream_fallbacks_total", **{"from": "openai", "to": "azure"}) == 1
    rej = {"scope_kind": "project", "scope_name": "proj-a", "limit": "rpm"}
    assert value(s, "llm_cache_quota_rejections_total", **rej) == 2
    assert value(s, "llm_cache_quota_queue_wait_seconds_count", project="proj-a", limit="tpm") == 1
    assert value(s, "llm_cache_budget_used_usd", project="proj-a", window="daily") == 4.0
    assert value(s, "llm_cache_budget_limit_usd", project="proj-a", window="daily") == 5.0
    assert value(s, "llm_cache_budget_used_usd", project="proj-b", window="monthly") == 1.0
    # Unlimited: no series at all, rather than a misleading 0.
    assert (
        "llm_cache_budget_limit_usd",
        frozenset({("project", "proj-b"), ("window", "monthly")}),
    ) not in s
    scope = {"scope_kind": "project", "scope_name": "proj-a"}
    assert value(s, "llm_cache_quota_remaining_requests", **scope) == 12
    assert ("llm_cache_quota_remaining_tokens", frozenset(scope.items())) not in s
    assert value(s, "llm_cache_expired_total") == 3
    assert value(s, "llm_cache_evicted_total") == 2
    assert value(s, "llm_cache_entries") == 10
    assert value(s, "llm_cache_bytes") == 4096
    # The callback runs at every scrape.
    assert value(scrape(m), "llm_cache_entries") == 11

    # A limit switched off later removes the series.
    m.set_remaining("project", "proj-a", None, None)
    m.set_budget("proj-a", "daily", 4.5, None)
    s = scrape(m)
    assert ("llm_cache_quota_remaining_requests", frozenset(scope.items())) not in s
    assert value(s, "llm_cache_budget_used_usd", project="proj-a", window="daily") == 4.5


def test_metrics_instances_are_independent() -> None:
    # One registry per app: a second app in the same process must not collide or share.
    a, b = Metrics(), Metrics()
    a.observe(event(Outcome.MISS))
    assert value(scrape(a), "llm_cache_requests_total", namespace="team-a", project="proj-a",
                 model="gpt-4o-mini", outcome="miss") == 1  # fmt: skip
    assert not any(name == "llm_cache_requests_total" for name, _ in scrape(b))


def test_cache_size_without_callback_and_failing_callback() -> None:
    m = Metrics()
    m.cache_size(5, 1234)
    assert value(scrape(m), "llm_cache_bytes") == 1234

    def broken() -> tuple[int, int]:
        raise OSError("store closed")

    m.cache_size_callback(broken)
    assert value(scrape(m), "llm_cache_entries") == 5  # the last known value, scrape still works


def test_stage_timer_accumulates_ms() -> None:
    stages: dict[str, float] = {}
    with StageTimer(stages, "embed"):
        time.sleep(0.002)
    with StageTimer(stages, "embed"):
        pass
    assert 1.5 < stages["embed"] < 500


# -------------------------------------------------------------------------------- outcome log


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "outcomes.sqlite3"


def test_append_is_batched_and_query_sees_queued_rows(log_path: Path) -> None:
    # A long flush interval: nothing reaches the disk until a batch fills or someone asks.
    with OutcomeLog.open(log_path, flush_interval_s=60, batch_rows=50) as log:
        for i in range(5):
            assert log.append(event(Outcome.MISS, t=1000.0 + i))
        time.sleep(0.05)
        assert log.written == 0
        rows = log.query()  # read-your-writes: pending rows are written first
        assert [e.time for e in rows] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
        assert log.written == 5
        # A full batch wakes the writer without waiting for the interval.
        for i in range(50):
            log.append(event(Outcome.EXACT_HIT, t=2000.0 + i))
        deadline = time.monotonic() + 5
        while log.written < 55 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.written == 55
        assert [e.time for e in log.query(since=2045.0)] == [2045.0 + i for i in range(5)]
        assert len(log.query(since=1002.0, until=1004.0)) == 2


def test_rows_round_trip_every_field(log_path: Path) -> None:
    e = event(
        Outcome.SEMANTIC_HIT,
        similarity=0.9123456789,
        best_rejected=0.87,
        dollars=0.1 + 0.2,  # not exactly representable: must still come back bit for bit
        latency_ms=12.345,
        stages={"exact": 0.25, "embed": 9.5},
        upstream_status=None,
        embed_timeout=True,
    )
    e2 = event(Outcome.ERROR, upstream_status=503, t=1_795_000_001.0)
    with OutcomeLog.open(log_path) as log:
        log.append(e)
        log.append(e2)
        assert log.query() == [e, e2]


def test_another_process_can_read_while_the_log_is_open(log_path: Path) -> None:
    with OutcomeLog.open(log_path) as log:
        log.append(event(Outcome.MISS))
        log.flush()
        assert len(read_outcomes(log_path)) == 1  # WAL: the read-only reader is not blocked
        log.append(event(Outcome.EXACT_HIT, t=1_795_000_001.0))
        assert log.count() == 2


def test_close_from_another_thread_loses_nothing(log_path: Path) -> None:
    log = OutcomeLog.open(log_path, flush_interval_s=0.001, batch_rows=10)
    accepted = 0

    def writer() -> None:
        nonlocal accepted
        for i in range(20_000):
            accepted += log.append(event(Outcome.MISS, t=float(i)))

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.01)
    log.close()
    thread.join()
    assert accepted > 0
    assert len(read_outcomes(log_path)) == accepted == log.written


def test_close_flushes_and_reopen_keeps_rows(log_path: Path) -> None:
    log = OutcomeLog.open(log_path, flush_interval_s=60, batch_rows=1000)
    for i in range(7):
        log.append(event(Outcome.MISS, t=1_795_000_000.0 + i))
    log.close()  # nothing was flushed before: close must write it
    log.close()  # idempotent
    assert not log.append(event(Outcome.MISS))  # refused after close, and counted
    assert log.dropped == 1
    with pytest.raises(RuntimeError):
        log.query()
    # Another process (the report CLI) reads it without writing.
    assert len(read_outcomes(log_path)) == 7
    assert read_outcomes(log_path.with_name("missing.sqlite3")) == []
    with OutcomeLog.open(log_path) as again:
        again.append(event(Outcome.EXACT_HIT, t=1_795_000_010.0))
        assert again.count() == 8
    with contextlib.closing(sqlite3.connect(log_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_retention_by_age_and_rows(log_path: Path) -> None:
    clock = FakeClock(wall=1_795_000_000.0)
    day = 86400.0
    with OutcomeLog.open(log_path, retention_days=2, max_rows=5, clock=clock) as log:
        for i in range(4):
            log.append(event(Outcome.MISS, t=clock.now() - 3 * day + i))  # too old
        for i in range(8):
            log.append(event(Outcome.MISS, t=clock.now() - day + i))
        assert log.prune() == 4 + 3
        # The newest max_rows survive.
        assert [e.time for e in log.query()] == [clock.now() - day + i for i in range(3, 8)]
        clock.advance(day + 4)
        assert log.prune() == 1  # i == 3 has now aged past 2 days
        assert log.count() == 4
    # Pruning also happens on open.
    clock.advance(day)
    with OutcomeLog.open(log_path, retention_days=2, max_rows=5, clock=clock) as log:
        assert log.count() == 0


def test_pending_rows_are_bounded(log_path: Path) -> None:
    with OutcomeLog.open(log_path, flush_interval_s=60, batch_rows=100, max_pending=3) as log:
        accepted = [log.append(event(Outcome.MISS, t=float(i))) for i in range(5)]
        assert accepted == [True, True, True, False, False]
        assert log.dropped == 2
        assert log.count() == 3


# ------------------------------------------------------------------------------------- facade


def test_telemetry_records_metrics_and_log_and_drops_prompts(tmp_path: Path) -> None:
    t = Telemetry.open(tmp_path / "o.sqlite3")
    t.record(event(Outcome.MISS, prompt="my secret question"))
    assert [e.prompt for e in t.events()] == [None]
    s = scrape(t.metrics)
    assert value(s, "llm_cache_outcome_log_written_total") == 1
    assert value(s, "llm_cache_outcome_log_dropped_total") == 0
    assert value(s, "llm_cache_requests_total", namespace="team-a", project="proj-a",
                 model="gpt-4o-mini", outcome="miss") == 1  # fmt: skip
    t.close()
    raw = (tmp_path / "o.sqlite3").read_bytes()
    assert b"my secret question" not in raw

    t = Telemetry.open(tmp_path / "o.sqlite3", log_prompts=True)
    t.record(event(Outcome.MISS, prompt="operator asked for this"))
    assert [e.prompt for e in t.events()] == [None, "operator asked for this"]
    t.close()


async def test_telemetry_without_log() -> None:
    t = Telemetry.open(None)
    t.record(event(Outcome.EXACT_HIT))
    assert t.events() == []
    assert await t.current_budgets() is None
    t.close()

    quota = QuotaManager(FakeClock())
    quota.configure("project", "p", Limits(daily_budget_usd=2.0))
    r = quota.reserve([("project", "p")], 1, 1.0)
    assert isinstance(r, Reservation)
    quota.settle(r, 1, 1.0)

    async def source() -> QuotaSnapshot:
        return quota.snapshot()

    t = Telemetry.open(None, quota=source)
    assert await t.current_budgets() == [
        {"project": "p", "window": "daily", "used_usd": 1.0, "limit_usd": 2.0},
        {"project": "p", "window": "monthly", "used_usd": 1.0, "limit_usd": None},
    ]
    t.close()


# ------------------------------------------------------------------------------ quota adapters


async def test_quota_snapshot_feeds_gauges_and_report_budgets() -> None:
    clock = FakeClock()
    quota = QuotaManager(clock)
    quota.configure("project", "proj-a", Limits(rpm=10, daily_budget_usd=5.0))
    quota.configure("upstream", "openai", Limits(tpm=1000))
    r = quota.reserve([("project", "proj-a"), ("upstream", "openai")], 100, 1.0)
    assert isinstance(r, Reservation)
    quota.settle(r, 120, 1.5)
    snapshot = quota.snapshot()

    assert budgets_of(snapshot) == [
        {"project": "proj-a", "window": "daily", "used_usd": 1.5, "limit_usd": 5.0},
        # Monthly has no limit but has spend, so it is shown.
        {"project": "proj-a", "window": "monthly", "used_usd": 1.5, "limit_usd": None},
    ]

    m = Metrics()

    async def source() -> QuotaSnapshot:
        return quota.snapshot()

    t = Telemetry(m, quota=source)
    await t.refresh()
    assert await t.current_budgets() == budgets_of(snapshot)
    s = scrape(m)
    assert value(s, "llm_cache_budget_used_usd", project="proj-a", window="daily") == 1.5
    assert value(s, "llm_cache_budget_limit_usd", project="proj-a", window="daily") == 5.0
    proj = {"scope_kind": "project", "scope_name": "proj-a"}
    assert value(s, "llm_cache_quota_remaining_requests", **proj) == 9
    assert ("llm_cache_quota_remaining_tokens", frozenset(proj.items())) not in s
    upstream = {"scope_kind": "upstream", "scope_name": "openai"}
    assert value(s, "llm_cache_quota_remaining_tokens", **upstream) == 880

    async def broken() -> QuotaSnapshot:
        raise RuntimeError("quota gone")

    t = Telemetry(m, quota=broken)
    await t.refresh()  # logged, not raised: the scrape still answers
    assert await t.current_budgets() is None  # the report goes without its budgets


def test_label_cap_keeps_first_values_and_seeded_ones() -> None:
    cap = LabelCap(2)
    cap.seed(["restored", OTHER])
    assert [cap(v) for v in ("a", "restored", "b", "a")] == ["a", "restored", OTHER, "a"]
