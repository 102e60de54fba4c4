"""`python -m cache_service report`: a report from the files a sidecar leaves in its data_dir,
read without writing to any of them, so it works while the server runs.

What the server's report has and the CLI reads instead:

* outcomes, miss reasons and top entries: the outcome log (`outcomes.sqlite3`), with the same
  queries as the server's;
* budgets: the spend snapshot (`spend.json`) plus the spend journal after it, against the
  project limits in the config file, through the same quota manager the server restores
  them into. Limits changed at run time (`PUT /v1/admin/limits`) are not in any file; with
  `redis_url` the spend is the fleet's, in Redis, and the section says so instead;
* quality: verdicts and learned thresholds from `feedback.json`, the audit tally from
  `audit.json` (which the server rewrites after each audit's verdict; where it is missing no
  audit has finished, and that part is listed as unavailable, saying so);
* the similarity threshold: `--threshold`, else the config's `similarity_threshold` (where a
  verifier runs, the server's report marks the verifier's floor instead, which the CLI
  cannot know from the config alone: the label says so).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache_service.report.build import ReportError, build_report, parse_since
from cache_service.report.formats import FORMATS, render
from cache_service.telemetry.outcome_log import (
    OutcomeFilter,
    read_miss_reasons,
    read_outcomes,
    read_top_entries,
)

if TYPE_CHECKING:
    from cache_service.settings import Settings

TOP_ENTRIES = 10
AUDIT_UNAVAILABLE = (
    "no audit.json in the data_dir: no sampled audit has finished here (audit_sample_rate "
    "is 0, or no semantic hit was sampled yet)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="1h, 7d, 30m … or an ISO 8601 time (default: everything)")
    p.add_argument("--format", choices=FORMATS, default="html")
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    p.add_argument("--data-dir", type=Path, help="the sidecar's data_dir (default: settings)")
    p.add_argument("--config", type=Path, help="YAML config file (also CACHE_CONFIG)")
    p.add_argument(
        "--threshold",
        type=float,
        help="similarity threshold to mark on the plot (default: the config's)",
    )


class _At:
    """A clock stopped at the report's `now` (budget windows are calendar days/months)."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:  # never awaited: the ledger is not run
        return None


def offline_budgets(
    settings: Settings, data_dir: Path, now: float
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(budgets as the server's report shows them, None) from spend.json and the journal
    against the config's limits; (None, why) where they cannot be known from files."""
    from cache_service.backends.journal import SpendJournal
    from cache_service.backends.jsonfile import JsonFile
    from cache_service.quota.local import saved_run_time_limits
    from cache_service.quota.manager import QuotaManager
    from cache_service.quota.projects import project_limits
    from cache_service.telemetry.quota_view import budgets_of

    if settings.redis_url:
        return None, "spend is the fleet's, kept in Redis (redis_url): see GET /v1/cache/report"
    manager = QuotaManager(_At(now))
    configured = {("project", p.name): project_limits(p) for p in settings.projects}
    for scope, limits in configured.items():
        manager.configure(*scope, limits)
    try:
        saved = JsonFile(data_dir / "spend.json").load()
        covered = int(saved.get("journal_seq", 0))
        events, _ = SpendJournal(data_dir).recover(after=covered)
        manager.restore_spend(saved.get("spend"), events)
        # As the server's start leaves them: a limit changed at run time stays unless the
        # config now gives the scope other limits than those it was changed over.
        for scope, limits, over in saved_run_time_limits(saved):
            if scope not in configured or over in (None, configured[scope]):
                manager.configure(*scope, limits)
    except (OSError, ValueError) as e:
        return None, f"the spend snapshot in {data_dir} is unreadable: {e}"
    return budgets_of(manager.snapshot()), None


def offline_quality(data_dir: Path) -> dict[str, Any]:
    """Verdicts and learned thresholds as feedback.json holds them (the server saves only
    thresholds above its base, so a base of 0 keeps exactly what it learned), and the audit
    tally as audit.json does (None where there is none)."""
    from cache_service.backends.jsonfile import JsonFile
    from cache_service.cache.feedback import AuditTally, FeedbackLearner, quality_view

    learner = FeedbackLearner(0.0)
    learner.load(JsonFile(data_dir / "feedback.json").load())
    audit = JsonFile(data_dir / "audit.json")
    tally = AuditTally.of(audit.load()) if audit.path.exists() else None
    return quality_view(learner, tally)


def run_cli(
    log_path: Path,
    *,
    since: str | None,
    fmt: str,
    out: Path | None,
    budgets: list[dict[str, Any]] | None = None,
    now: float | None = None,
    settings: Settings | None = None,
    threshold: float | None = None,
) -> int:
    """Read the log (and, with `settings`, the spend and feedback files beside it) without
    writing to them, render, write. Without `settings` the budget and quality sections say
    why they are missing."""
    now = time.time() if now is None else now
    data_dir = log_path.parent
    unavailable: dict[str, str] = {}
    quality: dict[str, Any] | None = None
    label = "threshold (--threshold)" if threshold is not None else "similarity threshold"
    if settings is None:
        if budgets is None:
            unavailable["budgets"] = "no config to read the projects' limits from"
        unavailable["quality"] = "no config to read feedback.json with"
    else:
        if threshold is None:
            threshold = settings.similarity_threshold
            if settings.verifier != "off":
                # The floor a running verifier searches from is in its manifest, not here.
                label = "similarity threshold (a running verifier searches from its floor)"
        if budgets is None:
            budgets, why = offline_budgets(settings, data_dir, now)
            if why is not None:
                unavailable["budgets"] = why
        if settings.redis_url:
            unavailable["quality"] = "verdicts are the fleet's, kept in Redis (redis_url)"
        else:
            quality = offline_quality(data_dir)
            if quality["audit"] is None:
                unavailable["quality_audit"] = AUDIT_UNAVAILABLE
    try:
        start = parse_since(since, now)
        events = read_outcomes(log_path, start)
        flt = OutcomeFilter(since=start)
        report = build_report(
            events,
            since=start,
            budgets=budgets,
            now=now,
            miss_reasons=read_miss_reasons(log_path, flt),
            top_entries=read_top_entries(log_path, flt, TOP_ENTRIES),
            quality=quality,
            threshold=threshold,
            threshold_label=label,
            unavailable=unavailable,
        )
        text, _ = render(report, fmt)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {fmt} report of {len(events):,} requests to {out}", file=sys.stderr)
    return 0
