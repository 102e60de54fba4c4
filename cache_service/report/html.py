"""A report as one self-contained HTML page: summary cards, the plots, then the tables."""

from __future__ import annotations

import base64
import html
from typing import Any

from cache_service.report.plots import plots
from cache_service.report.text import NO_ROWS, pct, period_line, tables, usd, waited

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
        f"<p class='muted'>{esc(period_line(report))}. Generated {esc(report['generated_at'])}."
        "</p>",
        "<div class='cards'>",
    ]
    for label, value in (
        ("hit rate", pct(t["hit_rate"])),
        ("requests", f"{t['requests']:,}"),
        ("tokens saved", f"{t['prompt_tokens_saved'] + t['completion_tokens_saved']:,}"),
        ("dollars saved", usd(t["dollars_saved"])),
        ("dollars spent", usd(t["dollars_spent"])),
        ("time saved (estimated)", waited(t["time_saved_ms"])),
    ):
        parts.append(f"<div class='card'>{esc(label)}<b>{esc(value)}</b></div>")
    parts.append("</div>")
    for title, png in plots(report):
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{data}'>"
        )
    for title, head, rows in tables(report):
        if not rows:
            parts.append(f"<h2>{esc(title)}</h2><p class='muted'>{esc(NO_ROWS)}</p>")
            continue
        parts.append(f"<h2>{esc(title)}</h2><table><thead><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in head]
        parts.append("</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>\n")
    return "".join(parts)
