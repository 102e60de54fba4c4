"""`Telemetry`, the one object the request path and the routes hold: it feeds each outcome to
the metrics and the outcome log, and reads the quota ledger's typed snapshot for scrapes and
the report's budget section."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cache_service.protocols import Clock, SystemClock
from cache_service.quota.usage import QuotaSnapshot
from cache_service.telemetry.events import OutcomeEvent
from cache_service.telemetry.metrics import Metrics
from cache_service.telemetry.outcome_log import OutcomeLog
from cache_service.telemetry.quota_view import apply_quota_snapshot, budgets_of
from cache_service.telemetry.size_history import SizeHistory

# The package's logger name from before the split, so log lines keep their "logger" field.
log = logging.getLogger("cache_service.telemetry")


QuotaSource = Callable[[], Awaitable[QuotaSnapshot]]
"""The quota ledger's `snapshot` (read on the event loop, where the ledger lives)."""


class Telemetry:
    """`record(event)` updates the metrics and queues the log row; `quota`, when given,
    feeds the budget and remaining-quota gauges before a scrape and the report's budgets."""

    def __init__(
        self,
        metrics: Metrics,
        outcome_log: OutcomeLog | None = None,
        *,
        log_prompts: bool = False,
        quota: QuotaSource | None = None,
        sizes: SizeHistory | None = None,
    ) -> None:
        self.metrics = metrics
        self.log = outcome_log
        self.log_prompts = log_prompts
        self.quota = quota
        self.sizes = sizes
        """The store's size after each sweep (None: no sweep feeds one)."""
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
        quota: QuotaSource | None = None,
        cache_size: Callable[[], tuple[int, int]] | None = None,
    ) -> Telemetry:
        """Blocking (opens the file): call via asyncio.to_thread. `path` None: metrics only.
        `cache_size() -> (entries, bytes)` is read at every scrape, off the event loop."""
        outcome_log = (
            None if path is None else OutcomeLog.open(path, retention_days, max_rows, clock=clock)
        )
        metrics = Metrics()
        metrics.cache_size_callback(cache_size)
        sizes = SizeHistory(clock or SystemClock())
        return cls(metrics, outcome_log, log_prompts=log_prompts, quota=quota, sizes=sizes)

    def record(self, event: OutcomeEvent) -> None:
        if event.prompt is not None and not self.log_prompts:
            event = dataclasses.replace(event, prompt=None)
        self.metrics.observe(event)
        if self.log is not None:
            self.log.append(event)

    def events(self, since: float | None = None, until: float | None = None) -> list[OutcomeEvent]:
        """Blocking: call via asyncio.to_thread."""
        return [] if self.log is None else self.log.query(since, until)

    async def current_budgets(self) -> list[dict[str, Any]] | None:
        """Project budget use for the report; None without a ledger or if it fails (the
        report then goes without its budget section)."""
        if self.quota is None:
            return None
        try:
            return budgets_of(await self.quota())
        except Exception:
            log.exception("quota snapshot failed; report goes without budgets")
            return None

    async def refresh(self) -> None:
        """Quota gauges from the ledger before a scrape; a failure costs fresh gauges,
        never the scrape."""
        if self.quota is None:
            return
        try:
            apply_quota_snapshot(self.metrics, await self.quota())
        except Exception:
            log.exception("quota snapshot failed; gauges may be stale")

    def close(self) -> None:
        """Flush and close the log. Blocking: call via asyncio.to_thread."""
        if self.log is not None:
            self.log.close()
