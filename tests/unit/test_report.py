from __future__ import annotations

import base64
import io
import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from cache_service.api.middleware import install_error_handlers
from cache_service.api.reports import router
from cache_service.cache.feedback import AuditTally, FeedbackLearner, quality_view
from cache_service.cache.tenancy import Tenancy
from cache_service.pricing import PriceTable, Usage
from cache_service.quota.limits import Limits
from cache_service.quota.manager import QuotaManager, Reservation
from cache_service.quota.usage import QuotaSnapshot
from cache_service.report.build import ReportError, build_report, parse_since
from cache_service.report.cli import run_cli
from cache_service.report.html import render_html
from cache_service.report.plots import _plot_similarity
from cache_service.report.text import render_json, render_markdown, tables
from cache_service.settings import Settings
from cache_service.telemetry.events import OutcomeEvent, split_cost
from cache_service.telemetry.hub import Telemetry
from cache_service.telemetry.metrics import Metrics
from cache_service.telemetry.outcome_log import (
    OutcomeFilter,
    OutcomeLog,
    read_miss_reasons,
    read_top_entries,
)
from cache_service.telemetry.stats import Outcome, Stats, timed
from tests.conftest import served
from tests.fakes import FakeClock, write_old_outcome_log

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()
BUDGETS = [
    {"project": "proj-a", "window": "daily", "used_usd": 4.0, "limit_usd": 5.0},
    {"project": "proj-b", "window": "monthly", "used_usd": 1.0, "limit_usd": None},
]


def ev(
    outcome: Outcome,
    t: float,
    *,
    ns: str = "a",
    model: str = "m1",
    p: int = 0,
    c: int = 0,
    dollars: float = 0.0,
    ms: float = 1.0,
    **kw: Any,
) -> OutcomeEvent:
    saved, spent = split_cost(outcome, dollars)
    return OutcomeEvent(
        time=t,
        request_id=f"r{t}",
        namespace=ns,
        project=kw.pop("project", "p-" + ns),
        model=model,
        outcome=outcome,
        prompt_tokens=p,
        completion_tokens=c,
        dollars_saved=saved,
        dollars_spent=spent,
        latency_ms=ms,
        **kw,
    )


def hand_built() -> list[OutcomeEvent]:
    return [
        ev(Outcome.EXACT_HIT, T0 + 10, p=100, c=50, dollars=0.5, ms=1.0, similarity=1.0,
           stages={"exact": 0.5}),
        ev(Outcome.SEMANTIC_HIT, T0 + 20, p=200, c=100, dollars=1.0, ms=10.0, similarity=0.91,
           stages={"exact": 0.5, "embed": 8.0, "search": 1.0}),
        ev(Outcome.SEMANTIC_HIT, T0 + 3700, ns="b", model="m2", p=10, c=10, dollars=0.25,
           ms=20.0, similarity=0.95, best_rejected=0.97),
        ev(Outcome.MISS, T0 + 30, p=300, c=30, dollars=2.0, ms=400.0, best_rejected=0.80,
           upstream_status=200),
        ev(Outcome.MISS, T0 + 3800, ns="b", p=40, c=4, dollars=0.125, ms=600.0,
           upstream_status=200, embed_timeout=True),
        ev(Outcome.BYPASS, T0 + 40, p=5, c=5, dollars=0.0625, ms=500.0, upstream_status=200),
        ev(Outcome.ERROR, T0 + 50, ms=30.0, upstream_status=502),
    ]  # fmt: skip


def test_report_numbers_for_hand_built_events() -> None:
    r = build_report(hand_built(), since=T0, now=T0 + 7200)
    t = r["totals"]
    assert (t["requests"], t["exact_hits"], t["semantic_hits"], t["hits"]) == (7, 1, 2, 3)
    assert (t["misses"], t["bypasses"], t["errors"], t["embed_timeouts"]) == (2, 1, 1, 1)
    assert t["hit_rate"] == 0.6  # 3 hits / (3 hits + 2 misses); the bypass does not count
    assert t["prompt_tokens_saved"] == 310 and t["completion_tokens_saved"] == 160
    assert t["upstream_prompt_tokens"] == 345 and t["upstream_completion_tokens"] == 39
    assert t["dollars_saved"] == 1.75 and t["dollars_spent"] == 2.1875

    assert set(r["by_namespace"]) == {"a", "b"}
    assert r["by_namespace"]["b"]["hit_rate"] == 0.5
    assert r["by_model"]["m2"]["requests"] == 1
    assert r["by_project"]["p-a"]["requests"] == 5
    assert r["period"]["since"] == "2026-11-22T12:00:00Z"
    assert r["period"]["first_event"] == "2026-11-22T12:00:10Z"

    timeline = r["timeline"]
    assert timeline["bucket_s"] == 300  # 63 minutes of data: the smallest size under 60 buckets
    buckets = timeline["buckets"]
    assert buckets[0]["start"] == "2026-11-22T12:00:00Z"
    assert sum(b["requests"] for b in buckets) == 7
    assert buckets[0]["hit_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert buckets[1]["hit_rate"] is None  # nothing eligible: a gap, not a 0 % dip
    assert buckets[-1]["cumulative_tokens_saved"] == 470
    assert buckets[-1]["cumulative_dollars_saved"] == 1.75

    sim = r["similarity"]
    edges = sim["bin_edges"]
    assert edges[0] == 0.5 and edges[-1] == 1.0 and len(edges) == 26
    assert sum(sim["served"]) == 2  # semantic hits only; the exact hit's 1.0 is left out
    assert sim["served"][edges.index(0.9)] == 1 and sim["served"][edges.index(0.94)] == 1
    assert sum(sim["best_rejected"]) == 2
    assert sim["best_rejected"][edges.index(0.8)] == 1
    assert sim["best_rejected"][edges.index(0.96)] == 1
    assert sim["served_summary"] == {
        "n": 2, "mean": 0.93, "p50": 0.93, "p90": 0.946, "p99": 0.9496, "min": 0.91, "max": 0.95,
    }  # fmt: skip

    lat = r["latency_ms"]
    assert list(lat) == ["exact_hit", "semantic_hit", "miss", "bypass", "error"]
    assert lat["miss"] == {
        "n": 2, "mean": 500.0, "p50": 500.0, "p90": 580.0, "p99": 598.0, "min": 400.0, "max": 600.0
    }  # fmt: skip
    assert list(r["stages_ms"]) == ["exact", "embed", "search"]
    assert r["stages_ms"]["exact"]["n"] == 2
    assert r["upstream_status"] == {"200": 3, "502": 1}
    assert "budgets" not in r

    with_budgets = build_report(hand_built(), since=T0, budgets=BUDGETS)
    assert with_budgets["budgets"][0]["used_fraction"] == 0.8
    assert with_budgets["budgets"][1]["used_fraction"] is None


def test_report_agrees_with_stats_fed_the_same_events(tmp_path: Path) -> None:
    """Drive Stats exactly as Pipeline.record does and the outcome log through Telemetry, then
    report from what the log kept: every number /v1/cache/stats shows must match."""
    rng = random.Random(5)
    prices = PriceTable.with_overrides(None)
    stats = Stats()
    telemetry = Telemetry.open(tmp_path / "outcomes.sqlite3")
    models = ["gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", "unpriced-model"]
    for i in range(400):
        ns = rng.choice(["a", "b", "key-0123abcd"])
        model = rng.choice(models)
        outcome = rng.choice(list(Outcome))
        p, c = rng.randint(0, 3000), rng.randint(0, 900)
        timeout = rng.random() < 0.05
        dollars = prices.cost(model, Usage(p, c))
        ms = rng.uniform(1, 900)
        status = 200 if outcome in (Outcome.MISS, Outcome.BYPASS) and rng.random() < 0.8 else None
        stats.record(ns, model, outcome, prompt_tokens=p, completion_tokens=c, dollars=dollars,
                     embed_timeout=timeout, latency_ms=timed(outcome, ms, status))  # fmt: skip
        saved, spent = split_cost(outcome, dollars)
        telemetry.record(
            OutcomeEvent(
                time=T0 + i * 7.5, request_id=str(i), namespace=ns, project=ns, model=model,
                outcome=outcome, prompt_tokens=p, completion_tokens=c, dollars_saved=saved,
                dollars_spent=spent, latency_ms=ms, embed_timeout=timeout, upstream_status=status,
            )
        )  # fmt: skip
    events = telemetry.events(since=T0)
    telemetry.close()

    report = build_report(events, since=T0)
    snap = stats.snapshot()
    assert report["totals"] == snap["total"]
    assert snap["total"]["time_saved_ms"] > 0  # latencies given: the estimate is compared too
    assert report["by_namespace"] == snap["by_namespace"]
    assert report["by_model"] == snap["by_model"]
    assert report["by_namespace_model"] == snap["by_namespace_model"]
    # And the same holds after the JSON round trip a client of the endpoint sees.
    assert json.loads(render_json(report))["totals"] == snap["total"]


def test_markdown_and_json_carry_the_same_totals() -> None:
    report = build_report(hand_built(), since=T0, budgets=BUDGETS)
    totals = json.loads(render_json(report))["totals"]
    md = render_markdown(report)
    section = md.split("## Totals", 1)[1].split("## ", 1)[0]
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", section, re.M))
    ints = {
        "requests": "requests", "exact hits": "exact_hits", "semantic hits": "semantic_hits",
        "misses": "misses", "bypasses": "bypasses", "errors": "errors",
        "prompt tokens saved": "prompt_tokens_saved",
        "upstream prompt tokens": "upstream_prompt_tokens",
    }  # fmt: skip
    for label, key in ints.items():
        assert int(rows[label].replace(",", "")) == totals[key]
    assert rows["hit rate (hits / (hits + misses))"] == f"{totals['hit_rate'] * 100:.2f}%"
    assert float(rows["dollars saved"].lstrip("$")) == totals["dollars_saved"]
    assert float(rows["dollars spent"].lstrip("$")) == totals["dollars_spent"]
    assert "## Budget use" in md and "| proj-a | daily | $4.0000 | $5.0000 | 80.00% |" in md
    # Every table in the Markdown is one the HTML prints too.
    assert [t[0] for t in tables(report)] == re.findall(r"^## (.+)$", md, re.M)


@pytest.fixture(scope="module")
def html_report() -> str:
    events = [
        *hand_built(),
        ev(Outcome.MISS, T0 + 60, ns="<script>alert(1)</script>", model="$x$", p=5, c=5),
    ]
    return render_html(build_report(events, since=T0, budgets=BUDGETS, now=T0 + 7200))


def test_html_is_self_contained_with_real_pngs(html_report: str) -> None:
    from matplotlib.image import imread

    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html_report)
    # hit rate, savings, breakdown, similarity, latency, budgets
    assert len(uris) == 6
    for data in uris:
        png = base64.b64decode(data, validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = imread(io.BytesIO(png), format="png")
        height, width = pixels.shape[:2]
        assert (width, height) == (900, 380)
        # Something was drawn: many distinct colours, not a blank or single-colour canvas.
        distinct = {tuple(px) for px in pixels[::4, ::4].reshape(-1, pixels.shape[2]).tolist()}
        assert len(distinct) > 20
    assert not re.search(r"(src|href)=['\"]?https?:", html_report)  # no external requests
    # Names from request headers are escaped, never markup.
    assert "<script>alert" not in html_report
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_report
    assert "Budget use" in html_report


def test_empty_log_renders_everywhere() -> None:
    report = build_report([], since=None)
    assert report["totals"]["requests"] == 0 and report["totals"]["hit_rate"] == 0.0
    html = render_html(report)
    assert "data:image/png" not in html  # no empty plots
    assert "0 requests" in render_markdown(report)
    assert json.loads(render_json(report))["timeline"]["buckets"] == []


def test_parse_since() -> None:
    now = T0
    assert parse_since(None, now) is None
    assert parse_since("", now) is None
    assert parse_since("1h", now) == now - 3600
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2026-11-22T11:00:00Z", now) == now - 3600
    assert parse_since("2026-11-22T11:00:00", now) == now - 3600  # naive means UTC
    assert parse_since("2026-11-22T12:00:00+01:00", now) == now - 3600
    assert parse_since("2026-11-22", now) == now - 12 * 3600
    with pytest.raises(ReportError, match="since"):
        parse_since("yesterday", now)


def test_cli_writes_a_report_from_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "outcomes.sqlite3"
    with OutcomeLog.open(path) as log:
        for e in hand_built():
            log.append(e)
        log.append(ev(Outcome.MISS, T0 - 86400))  # outside --since 1h
    out = tmp_path / "r.json"
    assert run_cli(path, since="1h", fmt="json", out=out, now=T0 + 3600) == 0
    report = json.loads(out.read_text())
    assert report["totals"]["requests"] == 7  # not the one from a day before
    assert run_cli(path, since=None, fmt="md", out=None, now=T0 + 3600) == 0
    assert "| requests | 8 |" in capsys.readouterr().out
    assert run_cli(path, since="last week", fmt="md", out=None) == 2
    assert "since must be" in capsys.readouterr().err


async def test_routes(tmp_path: Path) -> None:
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)

    # Budgets come from the quota ledger's snapshot: proj-a has spent $4 of $5 today.
    quota = QuotaManager(FakeClock())
    quota.configure("project", "proj-a", Limits(daily_budget_usd=5.0))
    held = quota.reserve([("project", "proj-a")], 10, 4.0)
    assert isinstance(held, Reservation)
    quota.settle(held, 10, 4.0)

    async def snapshot() -> QuotaSnapshot:
        return quota.snapshot()

    telemetry = Telemetry.open(tmp_path / "o.sqlite3", quota=snapshot)
    for e in hand_built():
        telemetry.record(e)
    try:
        learner = FeedbackLearner(0.92)
        learner.record("a", 0.95, correct=False)
        front = SimpleNamespace(learner=learner, floor=None)
        state = {
            "telemetry": telemetry,
            "tenancy": Tenancy(admin_key="adm"),
            "settings": Settings(data_dir=tmp_path, admin_key="adm", similarity_threshold=0.93),
            "front": front,
            "proxy": SimpleNamespace(auditor=SimpleNamespace(tally=AuditTally(4, 3, 1))),
        }
        transport = httpx.ASGITransport(app=served(app, state))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers={"X-Admin-Key": "adm"}
        ) as client:
            r = await client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            names = {f.name for f in text_string_to_metric_families(r.text)}
            assert {"llm_cache_requests", "llm_cache_similarity", "llm_cache_entries"} <= names

            r = await client.get("/v1/cache/report", params={"format": "json", "since": "3650d"})
            assert r.status_code == 200
            body = r.json()
            assert body["totals"]["requests"] == 7
            assert body["budgets"][0]["project"] == "proj-a"
            assert body["similarity"]["threshold"] == 0.93
            assert body["miss_reasons"] == {
                "misses": 2, "reasons": [{"reason": "unknown", "misses": 2, "share": 1.0}]
            }  # fmt: skip
            assert body["top_entries"] == []  # hand_built's hits name no entry
            assert body["quality"]["audit"]["estimated_precision"] == 0.75
            assert body["quality"]["feedback"] == {"a": {"correct": 0, "wrong": 1}}
            assert body["unavailable"] == {}

            front.floor = 0.8  # a verifier runs: cosine matching starts at its floor
            r = await client.get("/v1/cache/report", params={"format": "md"})
            assert "## Similarity (verifier floor 0.8000)" in r.text

            r = await client.get("/v1/cache/report", params={"format": "md"})
            assert r.headers["content-type"].startswith("text/markdown")
            assert "| requests | 7 |" in r.text

            r = await client.get("/v1/cache/report", params={"format": "pdf"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "format"
            r = await client.get("/v1/cache/report", params={"since": "soon"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "since"
    finally:
        telemetry.close()


def tuning_events() -> list[OutcomeEvent]:
    """Misses with their reasons, hits with the entries they came from."""
    return [
        ev(Outcome.MISS, T0 + 1, rejected_by="no_candidates"),
        ev(Outcome.MISS, T0 + 2, rejected_by="below_threshold", best_rejected=0.88),
        ev(Outcome.MISS, T0 + 3, rejected_by="below_threshold", best_rejected=0.9),
        ev(Outcome.MISS, T0 + 4, rejected_by="negation"),
        ev(Outcome.EXACT_HIT, T0 + 5, p=10, c=5, dollars=0.5, entry_id="e1", similarity=1.0),
        ev(Outcome.SEMANTIC_HIT, T0 + 6, ns="b", p=20, c=10, dollars=1.0, entry_id="e2",
           similarity=0.95),
        ev(Outcome.SEMANTIC_HIT, T0 + 7, ns="b", p=20, c=10, dollars=1.0, entry_id="e2",
           similarity=0.96),
    ]  # fmt: skip


def logged(path: Path, events: list[OutcomeEvent]) -> tuple[dict[str, int], list[Any]]:
    with OutcomeLog.open(path, retention_days=1e6) as log:
        for e in events:
            log.append(e)
        flt = OutcomeFilter(since=T0)
        return log.miss_reasons(flt), log.top_entries(flt, 10)


def test_tuning_sections(tmp_path: Path) -> None:
    """Miss reasons and top entries as the log counts them (the dashboard's queries), quality,
    and the threshold, in the data and in every table."""
    reasons, top = logged(tmp_path / "o.sqlite3", tuning_events())
    learner = FeedbackLearner(0.92)
    learner.record("b", 0.95, correct=False)
    learner.record("b", 0.96, correct=True)
    r = build_report(
        tuning_events(),
        since=T0,
        miss_reasons=reasons,
        top_entries=top,
        quality=quality_view(learner, AuditTally(audited=10, agreed=9)),
        threshold=0.92,
    )
    assert r["miss_reasons"] == {
        "misses": 4,
        "reasons": [
            {"reason": "below_threshold", "misses": 2, "share": 0.5},
            {"reason": "negation", "misses": 1, "share": 0.25},
            {"reason": "no_candidates", "misses": 1, "share": 0.25},
        ],
    }
    assert r["miss_reasons"]["misses"] == r["totals"]["misses"]
    assert [(e["entry_id"], e["hits"], e["tokens_saved"]) for e in r["top_entries"]] == [
        ("e2", 2, 60), ("e1", 1, 15)
    ]  # fmt: skip
    assert r["top_entries"][0]["dollars_saved"] == 2.0
    assert r["top_entries"][0]["namespace"] == "b"
    assert r["top_entries"][0]["last_hit"] == "2026-11-22T12:00:07Z"
    assert r["quality"]["audit"]["estimated_precision"] == 0.9
    assert r["quality"]["feedback"] == {"b": {"correct": 1, "wrong": 1}}
    assert r["quality"]["pending_wrong_reports"] == {"b": 1}
    assert r["similarity"]["threshold"] == 0.92
    assert r["unavailable"] == {"budgets": "not given to the report"}

    md = render_markdown(r)
    assert "## Miss reasons (4 misses)" in md
    assert "| below_threshold | 2 | 50.00% |" in md
    assert "| e2 | b | m1 | 2 | 60 | $2.0000 | 2026-11-22T12:00:07Z |" in md
    assert "| estimated precision | 90.00% |" in md
    assert "| b | 1 | 1 | 1 | — |" in md  # no learned threshold yet: one report pending
    assert "## Similarity (similarity threshold 0.9200)" in md
    assert "| budgets | not given to the report |" in md
    assert [t[0] for t in tables(r)] == re.findall(r"^## (.+)$", md, re.M)
    html = render_html(r)
    assert "Miss reasons (4 misses)" in html and "Top entries (most hits)" in html


def test_sections_not_given_say_why() -> None:
    r = build_report(
        hand_built(),
        since=T0,
        quality=quality_view(FeedbackLearner(0.9), None),
        unavailable={"miss_reasons": "the outcome log is off", "quality_audit": "in memory"},
    )
    assert "miss_reasons" not in r and "top_entries" not in r and "budgets" not in r
    assert r["unavailable"] == {
        "miss_reasons": "the outcome log is off",
        "top_entries": "not given to the report",
        "budgets": "not given to the report",
        "quality_audit": "in memory",
    }
    assert r["similarity"]["threshold"] is None
    md = render_markdown(r)
    assert "## Similarity\n" in md and "Quality: audits" not in md
    assert "| quality audit | in memory |" in md
    # An empty section says so rather than printing a bare header.
    feedback = md.split("## Quality: feedback", 1)[1].split("## ", 1)[0]
    assert "None recorded." in feedback and "| namespace |" not in feedback
    assert "None recorded." in render_html(r)


def test_similarity_plot_marks_the_threshold() -> None:
    from matplotlib.figure import Figure

    events = [
        ev(Outcome.SEMANTIC_HIT, T0, similarity=0.95),
        ev(Outcome.MISS, T0, best_rejected=0.7),
    ]
    for threshold in (0.92, 0.3):  # one below the histogram's first bin widens the axis
        fig = Figure()
        _plot_similarity(fig, build_report(events, since=None, threshold=threshold))
        [ax] = fig.axes
        xs = [np.asarray(line.get_xdata()).tolist() for line in ax.get_lines()]
        assert xs == [[threshold, threshold]]  # one vertical line, at the threshold
        assert ax.get_xlim()[0] <= threshold
        legend = ax.get_legend()
        assert legend is not None
        assert any(f"threshold {threshold:.2f}" in t.get_text() for t in legend.texts)
    fig = Figure()
    _plot_similarity(fig, build_report(events, since=None))
    assert not fig.axes[0].get_lines()


def test_cli_reads_budgets_quality_and_threshold_from_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The budgets the server would show, from spend.json plus the journal after it against
    the config's limits; verdicts from feedback.json; the threshold from the config or
    --threshold. The audit tally is only in the server's memory: said, not faked."""
    from cache_service.backends.journal import SpendJournal
    from cache_service.backends.jsonfile import JsonFile
    from cache_service.telemetry.quota_view import budgets_of

    clock = FakeClock(wall=T0)
    path = tmp_path / "outcomes.sqlite3"
    logged(path, tuning_events())
    # The server: $3 settled and snapshotted, then $1 more only in the journal.
    manager = QuotaManager(clock)
    manager.configure("project", "proj-a", Limits(daily_budget_usd=5.0))
    journal = SpendJournal(tmp_path)
    journal.start(1)
    manager.on_spend = journal.append
    for usd in (3.0, 1.0):
        held = manager.reserve([("project", "proj-a")], 10, usd)
        assert isinstance(held, Reservation)
        manager.settle(held, 10, usd)
        if usd == 3.0:
            JsonFile(tmp_path / "spend.json").save(
                {"spend": manager.export_spend(), "alerts": [], "journal_seq": journal.rotate()}
            )
    journal.close()
    server = budgets_of(manager.snapshot())
    learner = FeedbackLearner(0.92)
    learner.record("b", 0.97, correct=False)
    JsonFile(tmp_path / "feedback.json").save(learner.export())

    settings = Settings(
        data_dir=tmp_path,
        similarity_threshold=0.93,
        projects=[{"name": "proj-a", "daily_budget_usd": 5.0}],
    )
    assert run_cli(path, since=None, fmt="json", out=None, settings=settings, now=T0) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["budgets"] == build_report([], since=None, budgets=server)["budgets"]
    assert r["budgets"][0]["used_usd"] == 4.0 and r["budgets"][0]["used_fraction"] == 0.8
    assert r["quality"]["feedback"] == {"b": {"correct": 0, "wrong": 1}}
    assert r["quality"]["audit"] is None
    assert set(r["unavailable"]) == {"quality_audit"}
    assert "no audit.json" in r["unavailable"]["quality_audit"]
    assert r["similarity"]["threshold"] == 0.93
    # Once the server has saved an audit tally, the CLI shows it.
    JsonFile(tmp_path / "audit.json").save(AuditTally(audited=4, agreed=3, skipped=1).as_dict())
    assert run_cli(path, since=None, fmt="json", out=None, settings=settings, now=T0) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["quality"]["audit"] == {
        "audited": 4, "agreed": 3, "skipped": 1, "estimated_precision": 0.75
    }  # fmt: skip
    assert "quality_audit" not in r["unavailable"]
    (tmp_path / "audit.json").unlink()
    assert r["miss_reasons"]["misses"] == 4 and r["top_entries"][0]["entry_id"] == "e2"
    assert run_cli(path, since=None, fmt="json", out=None, settings=settings, now=T0,
                   threshold=0.8) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["similarity"]["threshold"] == 0.8

    # A fleet keeps spend and verdicts in Redis; without a config nothing says the limits.
    fleet = Settings(data_dir=tmp_path, redis_url="redis://localhost:6379/0")
    assert run_cli(path, since=None, fmt="md", out=None, settings=fleet, now=T0) == 0
    md = capsys.readouterr().out
    assert "## Budget use" not in md and "| budgets | spend is the fleet's" in md
    assert run_cli(path, since=None, fmt="json", out=None, now=T0) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["unavailable"]) == {"budgets", "quality"}
    assert r["similarity"]["threshold"] is None


async def test_cli_budgets_show_a_limit_changed_at_run_time_as_the_servers_start_would(
    tmp_path: Path,
) -> None:
    from cache_service.backends.journal import SpendJournal
    from cache_service.backends.jsonfile import JsonFile
    from cache_service.quota.local import LocalLedger
    from cache_service.report.cli import offline_budgets

    ledger = LocalLedger(
        FakeClock(wall=T0),
        snapshot_file=JsonFile(tmp_path / "spend.json"),
        journal=SpendJournal(tmp_path),
    )
    await ledger.configure("project", "proj-a", Limits(daily_budget_usd=5.0))
    await ledger.configure("project", "proj-a", Limits(daily_budget_usd=2.0), at_run_time=True)
    ledger.close()

    def limit(daily_budget_usd: float) -> float | None:
        config = Settings(
            data_dir=tmp_path, projects=[{"name": "proj-a", "daily_budget_usd": daily_budget_usd}]
        )
        budgets, why = offline_budgets(config, tmp_path, T0)
        assert budgets is not None, why
        (daily,) = [b for b in budgets if b["window"] == "daily"]
        value: float | None = daily["limit_usd"]
        return value

    assert limit(5.0) == 2.0  # the config it was changed over: the change stays
    assert limit(7.0) == 7.0  # a config changed since: it wins


def test_read_only_breakdowns_of_a_log_from_before_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    write_old_outcome_log(path)
    assert read_miss_reasons(path, OutcomeFilter()) == {"unknown": 1}
    assert read_top_entries(path, OutcomeFilter(), 10) == []
    assert read_miss_reasons(tmp_path / "absent.sqlite3", OutcomeFilter()) == {}


def test_report_command_reads_the_config_for_limits_and_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m cache_service report --config … [--threshold …]`: data_dir, the projects'
    limits and the threshold from the config; with --data-dir a broken config only costs
    the sections it would have given."""
    from cache_service.__main__ import build_parser

    monkeypatch.delenv("CACHE_CONFIG", raising=False)
    data = tmp_path / "data"
    logged(data / "outcomes.sqlite3", tuning_events())
    config = tmp_path / "cache.yaml"
    config.write_text(
        f"data_dir: {data}\nsimilarity_threshold: 0.94\n"
        "projects:\n  - name: proj-a\n    daily_budget_usd: 5\n"
    )

    def report(*argv: str) -> int:
        args = build_parser().parse_args(["report", "--format", "json", *argv])
        rc: int = args.func(args)
        return rc

    assert report("--config", str(config)) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["similarity"]["threshold"] == 0.94
    # No spend.json yet: the limit, nothing used (the server shows the same).
    assert r["budgets"] == [
        {"project": "proj-a", "window": "daily", "used_usd": 0.0, "limit_usd": 5.0,
         "used_fraction": 0.0}
    ]  # fmt: skip
    assert r["miss_reasons"]["misses"] == 4
    assert report("--config", str(config), "--threshold", "0.9") == 0
    assert json.loads(capsys.readouterr().out)["similarity"]["threshold"] == 0.9

    broken = tmp_path / "broken.yaml"
    broken.write_text("similarity_threshold: 2\n")
    assert report("--config", str(broken)) == 2
    assert "similarity_threshold" in capsys.readouterr().err
    assert report("--config", str(broken), "--data-dir", str(data)) == 0
    out = capsys.readouterr()
    assert "warning" in out.err
    assert set(json.loads(out.out)["unavailable"]) == {"budgets", "quality"}


async def test_route_without_the_outcome_log_says_what_it_cannot_show(tmp_path: Path) -> None:
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    state = {
        "telemetry": Telemetry(Metrics(), None),  # outcome_log: false, no quota ledger
        "tenancy": Tenancy(admin_key="adm"),
        "settings": Settings(data_dir=tmp_path, admin_key="adm"),
        "front": SimpleNamespace(learner=FeedbackLearner(0.92), floor=None),
        "proxy": SimpleNamespace(auditor=SimpleNamespace(tally=AuditTally())),
    }
    transport = httpx.ASGITransport(app=served(app, state))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers={"X-Admin-Key": "adm"}
    ) as client:
        body = (await client.get("/v1/cache/report")).json()
    assert body["events"] == 0 and "miss_reasons" not in body and "top_entries" not in body
    assert body["unavailable"] == {
        "miss_reasons": "the outcome log is off (outcome_log: false)",
        "top_entries": "the outcome log is off (outcome_log: false)",
        "budgets": "no quota ledger, or its snapshot failed",
    }
    assert body["quality"]["audit"]["audited"] == 0
