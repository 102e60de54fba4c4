"""`Telemetry`, the one object the pipeline and the routes hold: it feeds each outcome to
the metrics and the outcome log, and carries the hooks that read quota state for reports
and scrapes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cache_service.protocols import Clock
from cache_service.telemetry.events import OutcomeEvent
from cache_service.telemetry.metrics import Metrics
from cache_service.telemetry.outcome_log import OutcomeLog

# The package's logger name from before the split, so log lines keep their "logger" field.
log = logging.getLogger("cache_service.telemetry")


class Telemetry:
    """What the pipeline holds: `record(event)` updates the metrics and queues the log row.

    Hooks, both called on the event loop (state like the quota manager's is only safe to
    read there): `budgets` returns the current budget use (dicts with project, window,
    used_usd, limit_usd) for the report's budget section; `before_scrape` refreshes gauges
    right before GET /metrics renders.
    """

    def __init__(
        self,
        metrics: Metrics,
        outcome_log: OutcomeLog | None = None,
        *,
        log_prompts: bool = False,
        budgets: Callable[[], list[dict[str, Any]]] | None = None,
        before_scrape: Callable[[], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.log = outcome_log
        self.log_prompts = log_prompts
        self.budgets = budgets
        self.before_scrape = before_scrape
        metrics.watch_outcome_log(outcome_log)

    @classmethod
    def open(
        cls,
        path: Path | str | None,
        *,
        retention_days: float = 30.0,
        max_rows: int = 1_000_000,
        log_prompts: bool = False,
        clock: Clock | None = None,
    ) -> Telemetry:
        """Blocking (opens the file): call via asyncio.to_thread. `path` None: metrics only."""
        outcome_log = (
            None if path is None else OutcomeLog.open(path, retention_days, max_rows, clock=clock)
        )
        return cls(Metrics(), outcome_log, log_prompts=log_prompts)

    def record(self, event: OutcomeEvent) -> None:
        if event.prompt is not None and not self.log_prompts:
            event = dataclasses.replace(event, prompt=None)
        self.metrics.observe(event)
        if self.log is not None:
            self.log.append(event)

    def events(self, since: float | None = None, until: float | None = None) -> list[OutcomeEvent]:
        """Blocking: call via asyncio.to_thread."""
        return [] if self.log is None else self.log.query(since, until)

    def current_budgets(self) -> list[dict[str, Any]] | None:
        if self.budgets is None:
            return None
        try:
            return self.budgets()
        except Exception:
            log.exception("budget source failed; report goes without it")
            return None

    def refresh(self) -> None:
        """Run `before_scrape`; a failing hook costs fresh gauges, never the scrape."""
        if self.before_scrape is None:
            return
        try:
            self.before_scrape()
        except Exception:
            log.exception("before_scrape hook failed; gauges may be stale")

    def close(self) -> None:
        """Flush and close the log. Blocking: call via asyncio.to_thread."""
        if self.log is not None:
            self.log.close()
