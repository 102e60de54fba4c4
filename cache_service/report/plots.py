"""The report's plots as PNGs (matplotlib, imported only when a plot is drawn).

The plots are drawn from the report dict alone, so the HTML shows exactly the numbers the
JSON and Markdown carry.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cache_service.report.build import PERCENTILES
from cache_service.report.text import duration, pct

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
    vol.set_ylabel(f"requests per {duration(timeline['bucket_s'])}")
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
    threshold = sim.get("threshold")
    if threshold is not None:
        ax.axvline(
            threshold,
            color="#2166ac",
            linestyle="--",
            linewidth=1.5,
            label=f"{sim.get('threshold_label') or 'threshold'} {threshold:.2f}",
        )
    ax.set_xlim(min(edges[0], threshold or 1.0), edges[-1])
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("requests")
    ax.legend(loc="upper left", fontsize=8)


def _plot_latency(fig: Figure, report: dict[str, Any]) -> None:
    lat = report["latency_ms"]
    names = list(lat)
    ax = fig.add_subplot()
    n_groups = len(PERCENTILES)
    width = 0.8 / n_groups
    shades = ("#92c5de", "#4393c3", "#2166ac")
    for i, q in enumerate(PERCENTILES):
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
