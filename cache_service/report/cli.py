"""`python -m cache_service report`: a report from the outcome log, read without writing
to it, so it works while the server runs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cache_service.report.build import ReportError, build_report, parse_since
from cache_service.report.formats import FORMATS, render
from cache_service.telemetry.outcome_log import read_outcomes


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
