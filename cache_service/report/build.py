"""The numbers of a report: `build_report` turns outcome events into plain JSON-able data,
which every renderer only lays out.

Totals are computed by feeding the events to a `Stats`, the same class behind
GET /v1/cache/stats, so a report and the stats endpoint cannot disagree on a definition
(hit rate = hits / (hits + misses), bypasses excluded; tokens and dollars saved on hits,
spent on misses and bypasses).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from cache_service.telemetry.events import STAGES, OutcomeEvent
from cache_service.telemetry.stats import Outcome, Stats, record_event

# Bucket widths a reader can think in; the report picks the smallest giving <= MAX_BUCKETS.
_BUCKET_SIZES = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 60
SIMILARITY_BIN = 0.02
PERCENTILES = (50, 90, 99)
_OUTCOMES = tuple(o.value for o in Outcome)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ReportError(ValueError):
    """A report parameter is wrong; the message says which and why."""


def parse_since(text: str | None, now: float) -> float | None:
    """`1h`, `30m`, `7d`, `2w`, `90s` (that long before `now`) or an ISO 8601 date/time
    (naive means UTC); None or empty: everything in the log."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ReportError(
            f"since must be a duration like 1h, 7d or an ISO 8601 time, got {text!r}"
        ) from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_report(
    events: Sequence[OutcomeEvent],
    *,
    since: float | None,
    until: float | None = None,
    budgets: list[dict[str, Any]] | None = None,
    now: float | None = None,
    miss_reasons: dict[str, int] | None = None,
    top_entries: list[dict[str, Any]] | None = None,
    quality: dict[str, Any] | None = None,
    threshold: float | None = None,
    threshold_label: str = "similarity threshold",
    unavailable: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every number the renderers show, as plain JSON-able data.

    `events` are those of the period (the caller queried the log with `since`); `budgets`
    (dicts with project, window, used_usd, limit_usd) come from the quota manager and add a
    section only when given. `miss_reasons` and `top_entries` are the outcome log's own
    answers for the same period (`OutcomeLog.miss_reasons` / `top_entries`, or their
    read-only twins: the dashboard's definitions); `quality` is `quality_view`'s; `threshold`
    the cosine a candidate must reach (the configured similarity threshold, or the verifier's
    floor where one runs; `threshold_label` says which), marked on the similarity plot. A
    section not given is left out and listed under `unavailable`, with the reason from
    `unavailable` where the caller gave one.
    """
    by_ns = Stats()
    by_project = Stats()
    for e in events:
        record_event(by_ns, e.namespace, e)
        record_event(by_project, e.project, e)
    snap = by_ns.snapshot()
    first = min((e.time for e in events), default=None)
    last = max((e.time for e in events), default=None)
    report: dict[str, Any] = {
        "generated_at": iso(time.time() if now is None else now),
        "period": {
            "since": iso(since),
            "until": iso(until),
            "first_event": iso(first),
            "last_event": iso(last),
        },
        "events": len(events),
        "totals": snap["total"],
        "by_namespace": snap["by_namespace"],
        "by_model": snap["by_model"],
        "by_project": by_project.snapshot()["by_namespace"],
        "by_namespace_model": snap["by_namespace_model"],
        "timeline": _timeline(events),
        "similarity": _similarity(events),
        "latency_ms": {
            o: _summary([e.latency_ms for e in events if e.outcome.value == o])
            for o in _OUTCOMES
            if any(e.outcome.value == o for e in events)
        },
        "stages_ms": _stages(events),
        "upstream_status": {
            str(k): v
            for k, v in sorted(
                Tally(e.upstream_status for e in events if e.upstream_status is not None).items()
            )
        },
    }
    report["similarity"]["threshold"] = threshold
    report["similarity"]["threshold_label"] = threshold_label
    if miss_reasons is not None:
        report["miss_reasons"] = _miss_reasons(miss_reasons)
    if top_entries is not None:
        report["top_entries"] = [_top_entry(e) for e in top_entries]
    if quality is not None:
        report["quality"] = quality
    if budgets is not None:
        report["budgets"] = [_budget(b) for b in budgets]
    given = {
        "miss_reasons": miss_reasons,
        "top_entries": top_entries,
        "quality": quality,
        "budgets": budgets,
    }
    why = unavailable or {}
    report["unavailable"] = {
        name: why.get(name, "not given to the report") for name, v in given.items() if v is None
    } | {name: text for name, text in why.items() if name not in given}
    return report


def _miss_reasons(counts: dict[str, int]) -> dict[str, Any]:
    """Misses by why they missed, most first, with each reason's share: below_threshold
    says the threshold is what refuses, a guard's name that the guard does."""
    total = sum(counts.values())
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "misses": total,
        "reasons": [
            {"reason": r, "misses": n, "share": round(n / total, 4) if total else 0.0}
            for r, n in rows
        ],
    }


def _top_entry(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "entry_id": str(e["entry_id"]),
        "namespace": e.get("namespace"),
        "model": e.get("model"),
        "hits": int(e["hits"]),
        "tokens_saved": int(e.get("tokens_saved") or 0),
        "dollars_saved": round(float(e.get("dollars_saved") or 0.0), 10),
        "last_hit": iso(e.get("last_hit")),
    }


def _timeline(events: Sequence[OutcomeEvent]) -> dict[str, Any]:
    if not events:
        return {"bucket_s": None, "buckets": []}
    first = min(e.time for e in events)
    last = max(e.time for e in events)
    size = next((s for s in _BUCKET_SIZES if (last - first) / s < MAX_BUCKETS), _BUCKET_SIZES[-1])
    start = math.floor(first / size) * size
    per_bucket: dict[int, Stats] = defaultdict(Stats)
    for e in events:
        record_event(per_bucket[int((e.time - start) // size)], "", e)
    buckets = []
    cum_tokens = 0
    cum_dollars = 0.0
    for i in range(int((last - start) // size) + 1):
        c = per_bucket[i].snapshot()["total"]
        tokens = c["prompt_tokens_saved"] + c["completion_tokens_saved"]
        cum_tokens += tokens
        cum_dollars += c["dollars_saved"]
        buckets.append(
            {
                "start": iso(start + i * size),
                "requests": c["requests"],
                "exact_hits": c["exact_hits"],
                "semantic_hits": c["semantic_hits"],
                "hits": c["hits"],
                "misses": c["misses"],
                "bypasses": c["bypasses"],
                "errors": c["errors"],
                # None, not 0, where nothing was eligible: a gap in the plot, not a dip.
                "hit_rate": c["hit_rate"] if c["hits"] + c["misses"] else None,
                "tokens_saved": tokens,
                "dollars_saved": c["dollars_saved"],
                "cumulative_tokens_saved": cum_tokens,
                "cumulative_dollars_saved": round(cum_dollars, 10),
            }
        )
    return {"bucket_s": size, "buckets": buckets}


def _similarity(events: Sequence[OutcomeEvent]) -> dict[str, Any]:
    # Exact hits are 1.0 by definition; the distribution that says something about the
    # threshold is that of semantic hits against the best candidates refused.
    served = [
        e.similarity
        for e in events
        if e.outcome is Outcome.SEMANTIC_HIT and e.similarity is not None
    ]
    rejected = [e.best_rejected for e in events if e.best_rejected is not None]
    values = served + rejected
    lo = min(0.5, math.floor(min(values, default=0.5) / SIMILARITY_BIN) * SIMILARITY_BIN)
    lo = max(-1.0, lo)
    n_bins = round((1.0 - lo) / SIMILARITY_BIN)
    edges = [round(lo + i * SIMILARITY_BIN, 4) for i in range(n_bins + 1)]

    def histogram(xs: list[float]) -> list[int]:
        counts = [0] * n_bins
        for x in xs:
            counts[min(n_bins - 1, max(0, int((x - lo) / SIMILARITY_BIN + 1e-9)))] += 1
        return counts

    return {
        "bin_edges": edges,
        "served": histogram(served),
        "best_rejected": histogram(rejected),
        "served_summary": _summary(served, digits=4),
        "best_rejected_summary": _summary(rejected, digits=4),
    }


def _stages(events: Sequence[OutcomeEvent]) -> dict[str, Any]:
    values: dict[str, list[float]] = defaultdict(list)
    for e in events:
        for stage, ms in e.stages.items():
            values[stage].append(ms)
    order = [s for s in STAGES if s in values] + sorted(set(values) - set(STAGES))
    return {s: _summary(values[s]) for s in order}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of nothing")
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summary(values: Iterable[float], digits: int = 2) -> dict[str, Any]:
    xs = sorted(values)
    if not xs:
        return {"n": 0}
    out: dict[str, Any] = {"n": len(xs), "mean": round(sum(xs) / len(xs), digits)}
    for q in PERCENTILES:
        out[f"p{q}"] = round(percentile(xs, q), digits)
    out["min"] = round(xs[0], digits)
    out["max"] = round(xs[-1], digits)
    return out


def _budget(b: dict[str, Any]) -> dict[str, Any]:
    used = float(b.get("used_usd") or 0.0)
    limit = b.get("limit_usd")
    limit = None if limit is None else float(limit)
    return {
        "project": str(b.get("project", "")),
        "window": str(b.get("window", "")),
        "used_usd": used,
        "limit_usd": limit,
        "used_fraction": round(used / limit, 4) if limit else None,
    }
