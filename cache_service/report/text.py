"""A report as text: the tables Markdown and HTML both print, Markdown and JSON rendering,
and the number formatting the renderers and plots share."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def usd(x: float | None) -> str:
    if x is None:
        return "—"
    # Single answers cost fractions of a cent: keep enough digits to see them.
    return f"${x:,.2f}" if abs(x) >= 100 else f"${x:,.4f}" if abs(x) >= 1 else f"${x:.6f}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.2f}%"


def waited(ms: float | None) -> str:
    """Milliseconds as a reader thinks of waiting: 850 ms, 12.4 s, 3 min 05 s, 2 h 07 min."""
    if ms is None:
        return "—"
    s = ms / 1000
    if s < 1:
        # Halves up, as the dashboard's Math.round does (format() would round them to even).
        return f"{math.floor(ms + 0.5)} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600):,} h {int(s % 3600 // 60):02d} min"


TIME_SAVED_HOW = (
    "estimated: per hit, the median latency of the last 200 misses of its model minus the "
    "hit's own latency (never below 0)"
)


def _ms(x: Any) -> str:
    return "—" if x is None else f"{x:,.2f}"


Table = tuple[str, list[str], list[list[str]]]
NO_ROWS = "None recorded."


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
                [f"time saved ({TIME_SAVED_HOW})", waited(t["time_saved_ms"])],
                [
                    "hits counted no time (no miss of their model seen)",
                    f"{t['hits_unestimated']:,}",
                ],
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

    threshold = sim.get("threshold")
    out.append(
        (
            "Similarity"
            if threshold is None
            else f"Similarity ({sim.get('threshold_label') or 'threshold'} {threshold:.4f})",
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
    out += _tuning_tables(report)
    timeline = report["timeline"]
    if timeline["buckets"]:
        out.append(
            (
                f"Over time ({duration(timeline['bucket_s'])} buckets, UTC)",
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
    if report.get("unavailable"):
        out.append(
            (
                "Not in this report",
                ["section", "why"],
                [[name.replace("_", " "), why] for name, why in report["unavailable"].items()],
            )
        )
    return out


def _tuning_tables(report: dict[str, Any]) -> list[Table]:
    """Why lookups missed, which entries earn their keep, and what is known of quality."""
    out: list[Table] = []
    if "miss_reasons" in report:
        mr = report["miss_reasons"]
        out.append(
            (
                f"Miss reasons ({mr['misses']:,} misses)",
                ["rejected by", "misses", "share of misses"],
                [[r["reason"], f"{r['misses']:,}", pct(r["share"])] for r in mr["reasons"]],
            )
        )
    if "top_entries" in report:
        out.append(
            (
                "Top entries (most hits)",
                ["entry", "namespace", "model", "hits", "tokens saved", "$ saved", "last hit"],
                [
                    [e["entry_id"], e["namespace"] or "—", e["model"] or "—", f"{e['hits']:,}",
                     f"{e['tokens_saved']:,}", usd(e["dollars_saved"]), e["last_hit"] or "—"]
                    for e in report["top_entries"]
                ],
            )
        )  # fmt: skip
    q = report.get("quality")
    if q is None:
        return out
    audit = q.get("audit")
    if audit is not None:
        out.append(
            (
                "Quality: audits (semantic hits re-asked upstream; audit.json keeps them)",
                ["metric", "value"],
                [
                    ["audited", f"{audit['audited']:,}"],
                    ["agreed", f"{audit['agreed']:,}"],
                    ["skipped", f"{audit['skipped']:,}"],
                    ["estimated precision", pct(audit["estimated_precision"])],
                ],
            )
        )
    feedback = q.get("feedback") or {}
    learned = q.get("learned_thresholds") or {}
    pending = q.get("pending_wrong_reports") or {}
    names = sorted(set(feedback) | set(learned) | set(pending))
    out.append(
        (
            "Quality: feedback and learned thresholds (every verdict kept, not only this period)",
            ["namespace", "correct", "wrong", "pending wrong reports", "learned threshold"],
            [
                [
                    ns,
                    f"{feedback.get(ns, {}).get('correct', 0):,}",
                    f"{feedback.get(ns, {}).get('wrong', 0):,}",
                    f"{pending.get(ns, 0):,}",
                    "—" if ns not in learned else f"{learned[ns]:.4f}",
                ]
                for ns in names
            ],
        )
    )
    return out


def duration(seconds: int | None) -> str:
    if not seconds:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def period_line(report: dict[str, Any]) -> str:
    p = report["period"]
    since = p["since"] or "the start of the log"
    until = p["until"] or report["generated_at"]
    return f"{report['events']:,} requests from {since} to {until}"


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Cache report", "", period_line(report), ""]
    for title, head, rows in tables(report):
        lines += [f"## {title}", ""]
        if not rows:
            lines += [NO_ROWS, ""]
            continue
        lines += [_md_row(head), _md_row(["---"] * len(head))]
        lines += [_md_row(r) for r in rows]
        lines.append("")
    return "\n".join(lines)


def _md_row(cells: Sequence[str]) -> str:
    # Namespaces and models come from request headers: keep them from breaking the table.
    safe = (c.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ") for c in cells)
    return "| " + " | ".join(safe) + " |"
