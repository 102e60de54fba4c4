"""Reports over the outcome log: `build_report` computes the numbers, the renderers only lay
them out (JSON, Markdown, or one self-contained HTML file with PNG plots).

Totals are computed by feeding the events to a `Stats`, the same class behind
GET /v1/cache/stats, so a report and the stats endpoint cannot disagree on a definition
(hit rate = hits / (hits + misses), bypasses excluded; tokens and dollars saved on hits,
spent on misses and bypasses). The plots are drawn from the report dict alone, so the HTML
shows exactly the numbers the JSON and Markdown carry.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
import sys
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache_service.stats import Outcome, Stats
from cache_service.telemetry import STAGES, OutcomeEvent, record_event

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("html", "md", "json")
MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
    "json": "application/json",
}

# Bucket widths a reader can think in; the report picks the smallest giving <= MAX_BUCKETS.
_BUCKET_SIZES = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 60
SIMILARITY_BIN = 0.02
_PERCENTILES = (50, 90, 99)
_OUTCOMES = tuple(o.value for o in Outcome)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ReportError(ValueError):
    """A report parameter is wrong; the message says which and why."""


# ------------------------------------------------------------------------------------ inputs


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


# ------------------------------------------------------------------------------------ numbers


def build_report(
    events: Sequence[OutcomeEvent],
    *,
    since: float | None,
    until: float | None = None,
    budgets: list[dict[str, Any]] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Every number the renderers show, as plain JSON-able data.

    `events` are those of the period (the caller queried the log with `since`); `budgets`
    (dicts with project, window, used_usd, limit_usd) come from the quota manager and add a
    section only when given.
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
    if budgets is not None:
        report["budgets"] = [_budget(b) for b in budgets]
    return report


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
    for q in _PERCENTILES:
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


# ----------------------------------------------------------------------------------- renderers


def render(report: dict[str, Any], fmt: str) -> tuple[str, str]:
    """(text, media type) in one of FORMATS."""
    renderers: dict[str, Callable[[dict[str, Any]], str]] = {
        "html": render_html,
        "md": render_markdown,
        "json": render_json,
    }
    if fmt not in renderers:
        raise ReportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return renderers[fmt](report), MEDIA_TYPES[fmt]


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def usd(x: float | None) -> str:
    if x is None:
        return "—"
    # Single answers cost fractions of a cent: keep enough digits to see them.
    return f"${x:,.2f}" if abs(x) >= 100 else f"${x:,.4f}" if abs(x) >= 1 else f"${x:.6f}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.2f}%"


def _ms(x: Any) -> str:
    return "—" if x is None else f"{x:,.2f}"


Table = tuple[str, list[str], list[list[str]]]


def _counter_rows(group: dict[str, dict[str, Any]]) -> list[list[str]]:
    return [
        [
            name,
            f"{c['requests']:,}",
            f"{c['exact_hits']:,}",
            f"{c['semantic_hits']:,}",
            f"{c['misses']:,}",
            f"{c['bypasses']:,}",
            f"{c['errors']:,}",
            pct(c["hit_rate"]),
            f"{c['prompt_tokens_saved'] + c['completion_tokens_saved']:,}",
            usd(c["dollars_saved"]),
            usd(c["dollars_spent"]),
        ]
        for name, c in group.items()
    ]


_COUNTER_HEAD = [
    "requests", "exact hits", "semantic hits", "misses", "bypasses", "errors", "hit rate",
    "tokens saved", "$ saved", "$ spent",
]  # fmt: skip


def tables(report: dict[str, Any]) -> list[Table]:
    """The report as (title, header, rows): Markdown and HTML both print exactly these."""
    t = report["totals"]
    out: list[Table] = [
        (
            "Totals",
            ["metric", "value"],
            [
                ["requests", f"{t['requests']:,}"],
                ["exact hits", f"{t['exact_hits']:,}"],
                ["semantic hits", f"{t['semantic_hits']:,}"],
                ["hits", f"{t['hits']:,}"],
                ["misses", f"{t['misses']:,}"],
                ["bypasses", f"{t['bypasses']:,}"],
                ["errors", f"{t['errors']:,}"],
                ["embed timeouts", f"{t['embed_timeouts']:,}"],
                ["hit rate (hits / (hits + misses))", pct(t["hit_rate"])],
                ["prompt tokens saved", f"{t['prompt_tokens_saved']:,}"],
                ["completion tokens saved", f"{t['completion_tokens_saved']:,}"],
                ["dollars saved", usd(t["dollars_saved"])],
                ["upstream prompt tokens", f"{t['upstream_prompt_tokens']:,}"],
                ["upstream completion tokens", f"{t['upstream_completion_tokens']:,}"],
                ["dollars spent", usd(t["dollars_spent"])],
            ],
        ),
        ("By namespace", ["namespace", *_COUNTER_HEAD], _counter_rows(report["by_namespace"])),
        ("By project", ["project", *_COUNTER_HEAD], _counter_rows(report["by_project"])),
        ("By model", ["model", *_COUNTER_HEAD], _counter_rows(report["by_model"])),
    ]
    head = ["n", "mean", "p50", "p90", "p99", "max"]

    def summary_rows(
        group: dict[str, dict[str, Any]], fmt: Callable[[Any], str]
    ) -> list[list[str]]:
        return [
            [name, f"{s['n']:,}", *(fmt(s.get(k)) for k in head[1:])] for name, s in group.items()
        ]

    out.append(
        ("Latency by outcome (ms)", ["outcome", *head], summary_rows(report["latency_ms"], _ms))
    )
    if report["stages_ms"]:
        out.append(("Lookup stages (ms)", ["stage", *head], summary_rows(report["stages_ms"], _ms)))
    sim = report["similarity"]

    def f4(x: Any) -> str:
        return "—" if x is None else f"{x:.4f}"

    out.append(
        (
            "Similarity",
            ["candidates", *head],
            summary_rows(
                {
                    "served (semantic hits)": sim["served_summary"],
                    "best rejected": sim["best_rejected_summary"],
                },
                f4,
            ),
        )
    )
    timeline = report["timeline"]
    if timeline["buckets"]:
        out.append(
            (
                f"Over time ({_duration(timeline['bucket_s'])} buckets, UTC)",
                ["start", "requests", "hits", "misses", "hit rate", "tokens saved", "$ saved",
                 "cumulative $ saved"],
                [
                    [
                        b["start"], f"{b['requests']:,}", f"{b['hits']:,}", f"{b['misses']:,}",
                        pct(b["hit_rate"]), f"{b['tokens_saved']:,}", usd(b["dollars_saved"]),
                        usd(b["cumulative_dollars_saved"]),
                    ]
                    for b in timeline["buckets"]
                ],
            )
        )  # fmt: skip
    if report["upstream_status"]:
        out.append(
            (
                "Upstream status",
                ["status", "responses"],
                [[k, f"{v:,}"] for k, v in report["upstream_status"].items()],
            )
        )
    if "budgets" in report:
        out.append(
            (
                "Budget use",
                ["project", "window", "used", "limit", "used %"],
                [
                    [b["project"], b["window"], usd(b["used_usd"]), usd(b["limit_usd"]),
                     pct(b["used_fraction"])]
                    for b in report["budgets"]
                ],
            )
        )  # fmt: skip
    return out


def _duration(seconds: int | None) -> str:
    if not seconds:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _period_line(report: dict[str, Any]) -> str:
    p = report["period"]
    since = p["since"] or "the start of the log"
    until = p["until"] or report["generated_at"]
    return f"{report['events']:,} requests from {since} to {until}"


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Cache report", "", _period_line(report), ""]
    for title, head, rows in tables(report):
        lines += [f"## {title}", "", _md_row(head), _md_row(["---"] * len(head))]
        lines += [_md_row(r) for r in rows]
        lines.append("")
    return "\n".join(lines)


def _md_row(cells: Sequence[str]) -> str:
    # Namespaces and models come from request headers: keep them from breaking the table.
    safe = (c.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ") for c in cells)
    return "| " + " | ".join(safe) + " |"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;
max-width:1000px;color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.5em}
table{border-collapse:collapse;margin:.5em 0 1em;font-variant-numeric:tabular-nums}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}
img{max-width:100%;display:block;margin:.5em 0}.muted{color:#777}
"""


def render_html(report: dict[str, Any]) -> str:
    """One file, no external requests: styles inline, plots as base64 PNG data URIs."""
    t = report["totals"]
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Cache report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Cache report</h1>",
        f"<p class='muted'>{esc(_period_line(report))}. Generated {esc(report['generated_at'])}."
        "</p>",
        "<div class='cards'>",
    ]
    for label, value in (
        ("hit rate", pct(t["hit_rate"])),
        ("requests", f"{t['requests']:,}"),
        ("tokens saved", f"{t['prompt_tokens_saved'] + t['completion_tokens_saved']:,}"),
        ("dollars saved", usd(t["dollars_saved"])),
        ("dollars spent", usd(t["dollars_spent"])),
    ):
        parts.append(f"<div class='card'>{esc(label)}<b>{esc(value)}</b></div>")
    parts.append("</div>")
    for title, png in plots(report):
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{data}'>"
        )
    for title, head, rows in tables(report):
        parts.append(f"<h2>{esc(title)}</h2><table><thead><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in head]
        parts.append("</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>\n")
    return "".join(parts)


# ---------------------------------------------------------------------------------------- plots

_COLORS = {
    "exact_hit": "#1b7837",
    "semantic_hit": "#7fbf7b",
    "miss": "#d6604d",
    "bypass": "#bababa",
    "error": "#762a83",
}
_MAX_BARS = 12


def plots(report: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(title, PNG) for each plot the data supports; sections with no data are left out
    rather than drawn as empty axes."""
    out: list[tuple[str, bytes]] = []
    buckets = report["timeline"]["buckets"]
    if buckets:
        out.append(("Hit rate over time", _png(_plot_hit_rate, report)))
        out.append(("Tokens and dollars saved (cumulative)", _png(_plot_saved, report)))
        out.append(("Requests by namespace and model", _png(_plot_breakdown, report)))
    sim = report["similarity"]
    if sim["served_summary"]["n"] or sim["best_rejected_summary"]["n"]:
        out.append(("Similarity: served vs best rejected", _png(_plot_similarity, report)))
    if report["latency_ms"]:
        out.append(("Latency: hits vs misses", _png(_plot_latency, report)))
    if report.get("budgets"):
        out.append(("Budget use per project", _png(_plot_budgets, report)))
    return out


def _png(draw: Callable[[Figure, dict[str, Any]], None], report: dict[str, Any]) -> bytes:
    # The object API with an explicit Agg canvas: no pyplot, so no global figure registry to
    # leak into, no GUI backend selection, and the figure is freed with its last reference.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig, report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _starts(report: dict[str, Any]) -> list[float]:
    """Bucket starts as epoch seconds."""
    return [
        datetime.fromisoformat(b["start"].replace("Z", "+00:00")).timestamp()
        for b in report["timeline"]["buckets"]
    ]


def _days(epochs: Iterable[float]) -> list[float]:
    """Epoch seconds to matplotlib's date unit (days since its epoch, an rcParam)."""
    import matplotlib.dates as mdates

    zero = float(mdates.date2num(datetime(1970, 1, 1, tzinfo=UTC)))  # type: ignore[no-untyped-call]
    return [zero + t / 86400 for t in epochs]


def _date_axis(ax: Axes) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    formatter = mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(formatter)
    ax.set_xlabel("time (UTC)")


def _plot_hit_rate(fig: Figure, report: dict[str, Any]) -> None:
    timeline = report["timeline"]
    buckets = timeline["buckets"]
    size = timeline["bucket_s"]
    starts = _starts(report)
    width = size / 86400  # matplotlib's date unit is the day
    ax = fig.add_subplot()
    vol = ax.twinx()
    vol.bar(
        _days(starts),
        [b["requests"] for b in buckets],
        width=width,
        align="edge",
        color="#cfd8e3",
        label="requests",
    )
    vol.set_ylabel(f"requests per {_duration(timeline['bucket_s'])}")
    rate = [float("nan") if b["hit_rate"] is None else b["hit_rate"] * 100 for b in buckets]
    ax.plot(
        _days(t + size / 2 for t in starts),
        rate,
        color="#1b7837",
        marker="o",
        markersize=3,
        label="hit rate",
    )
    total = report["totals"]["hit_rate"] * 100
    ax.axhline(total, color="#1b7837", linestyle=":", linewidth=1, label=f"overall {total:.1f}%")
    # Draw the rate line over the volume bars.
    ax.set_zorder(vol.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_ylim(0, 100)
    ax.set_ylabel("hit rate (%)")
    _date_axis(ax)
    handles = ax.get_legend_handles_labels()
    vh = vol.get_legend_handles_labels()
    ax.legend(handles[0] + vh[0], handles[1] + vh[1], loc="upper left", fontsize=8)
    ax.set_title("Hit rate = hits / (hits + misses), bypasses excluded", fontsize=10)


def _plot_saved(fig: Figure, report: dict[str, Any]) -> None:
    buckets = report["timeline"]["buckets"]
    size = report["timeline"]["bucket_s"]
    # Bucket ends: what had been saved by then. A point per bucket from the first bucket's
    # start at 0, so even a single bucket draws a line rather than a lone dot.
    starts = _starts(report)
    xs = _days([starts[0], *(t + size for t in starts)])
    # Two panels, not twin axes: tokens and dollars usually move together, and two curves
    # scaled onto one box would lie on top of each other.
    tok, usd_ax = fig.subplots(1, 2, sharex=True)
    tok.plot(xs, [0, *(b["cumulative_tokens_saved"] for b in buckets)], color="#2166ac")
    tok.set_ylabel("tokens saved (cumulative)")
    tok.yaxis.set_major_formatter(_thousands())
    usd_ax.plot(xs, [0.0, *(b["cumulative_dollars_saved"] for b in buckets)], color="#b2182b")
    usd_ax.set_ylabel("dollars saved (USD, cumulative)")
    for ax in (tok, usd_ax):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        _date_axis(ax)


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _pos: f"{x:,.0f}")


def _plot_breakdown(fig: Figure, report: dict[str, Any]) -> None:
    groups = [("namespace", report["by_namespace"]), ("model", report["by_model"])]
    axes = fig.subplots(1, 2)
    for ax, (label, group) in zip(axes, groups, strict=True):
        top = sorted(group.items(), key=lambda kv: kv[1]["requests"], reverse=True)[:_MAX_BARS]
        top.reverse()  # barh draws bottom-up; the largest goes on top
        # Numeric positions: string categories would merge two names that shorten alike.
        ys = list(range(len(top)))
        left = [0] * len(top)
        for key, outcome in (
            ("exact_hits", "exact_hit"),
            ("semantic_hits", "semantic_hit"),
            ("misses", "miss"),
            ("bypasses", "bypass"),
            ("errors", "error"),
        ):
            widths = [c[key] for _, c in top]
            label_text = outcome.replace("_", " ") if ax is axes[0] else None
            ax.barh(ys, widths, left=left, color=_COLORS[outcome], label=label_text)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        for y, (_, c) in enumerate(top):
            note = f" {pct(c['hit_rate'])}"
            ax.annotate(note, (c["requests"], y), va="center", fontsize=8, annotation_clip=False)
        ax.set_yticks(ys, [_label(n) for n, _ in top], fontsize=8)
        ax.set_xlabel("requests")
        ax.set_title(f"by {label} (number: hit rate)", fontsize=10)
        ax.margins(x=0.18)
    fig.legend(loc="outside upper center", ncols=5, fontsize=8, frameon=False)


def _label(name: str, limit: int = 24) -> str:
    """A name from a request header, shortened, with `$` escaped so matplotlib does not
    read it as the start of a formula."""
    name = name if len(name) <= limit else name[: limit - 1] + "…"
    return name.replace("$", r"\$")


def _money(x: float) -> str:
    return rf"\${x:,.2f}"


def _plot_similarity(fig: Figure, report: dict[str, Any]) -> None:
    sim = report["similarity"]
    edges = sim["bin_edges"]
    ax = fig.add_subplot()
    width = edges[1] - edges[0]
    for key, color, label in (
        ("best_rejected", "#d6604d", "best rejected candidate"),
        ("served", "#1b7837", "served (semantic hits)"),
    ):
        n = sim[f"{key}_summary"]["n"]
        ax.bar(
            edges[:-1],
            sim[key],
            width=width,
            align="edge",
            alpha=0.6,
            color=color,
            edgecolor=color,
            label=f"{label}, n={n:,}",
        )
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("requests")
    ax.legend(loc="upper left", fontsize=8)


def _plot_latency(fig: Figure, report: dict[str, Any]) -> None:
    lat = report["latency_ms"]
    names = list(lat)
    ax = fig.add_subplot()
    n_groups = len(_PERCENTILES)
    width = 0.8 / n_groups
    shades = ("#92c5de", "#4393c3", "#2166ac")
    for i, q in enumerate(_PERCENTILES):
        xs = [j + (i - (n_groups - 1) / 2) * width for j in range(len(names))]
        # Log scale: a latency of 0 (a fake clock) would vanish, so floor it at 1 µs.
        ys = [max(lat[n][f"p{q}"], 0.001) for n in names]
        ax.bar(xs, ys, width=width, color=shades[i], label=f"p{q}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), [f"{n.replace('_', ' ')}\n(n={lat[n]['n']:,})" for n in names])
    ax.set_ylabel("latency in the sidecar (ms, log scale)")
    ax.legend(loc="upper left", fontsize=8)


def _plot_budgets(fig: Figure, report: dict[str, Any]) -> None:
    budgets = list(reversed(report["budgets"]))  # barh draws bottom-up; keep the table order
    ax = fig.add_subplot()
    ys = list(range(len(budgets)))
    labels = [f"{_label(b['project'])} ({_label(b['window'])})" for b in budgets]
    if any(b["limit_usd"] for b in budgets):
        values = [(b["used_fraction"] or 0.0) * 100 for b in budgets]
        colors = ["#d6604d" if v >= 100 else "#f4a582" if v >= 80 else "#4393c3" for v in values]
        ax.barh(ys, values, color=colors)
        ax.axvline(100, color="#b2182b", linestyle="--", linewidth=1)
        for y, b in enumerate(budgets):
            note = (
                f" {_money(b['used_usd'])} of {_money(b['limit_usd'])}"
                if b["limit_usd"]
                else f" {_money(b['used_usd'])}, no limit"
            )
            ax.annotate(note, (values[y], y), va="center", fontsize=8, annotation_clip=False)
        ax.set_xlabel("budget used in the current window (% of limit)")
        ax.set_xlim(0, max(110.0, *values) * 1.25)
    else:
        ax.barh(ys, [b["used_usd"] for b in budgets], color="#4393c3")
        ax.set_xlabel("spent in the current window (USD; no limits set)")
    ax.set_yticks(ys, labels, fontsize=8)


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="1h, 7d, 30m … or an ISO 8601 time (default: everything)")
    p.add_argument("--format", choices=FORMATS, default="html")
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    p.add_argument("--data-dir", type=Path, help="the sidecar's data_dir (default: settings)")
    p.add_argument("--config", type=Path, help="YAML config file (also CACHE_CONFIG)")


def run_cli(
    log_path: Path,
    *,
    since: str | None,
    fmt: str,
    out: Path | None,
    budgets: list[dict[str, Any]] | None = None,
    now: float | None = None,
) -> int:
    """Read the log without writing to it (the server may be running), render, write."""
    from cache_service.telemetry import read_outcomes

    now = time.time() if now is None else now
    try:
        start = parse_since(since, now)
        events = read_outcomes(log_path, start)
        text, _ = render(build_report(events, since=start, budgets=budgets, now=now), fmt)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {fmt} report of {len(events):,} requests to {out}", file=sys.stderr)
    return 0
