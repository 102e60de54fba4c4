"""The quota ledger's typed snapshot as the metrics' gauges and the report's budget rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cache_service.quota.usage import QuotaSnapshot

if TYPE_CHECKING:
    from cache_service.telemetry.metrics import Metrics


def budgets_of(snapshot: QuotaSnapshot) -> list[dict[str, Any]]:
    """Project budgets as `build_report(budgets=...)` takes them: windows with a limit or
    with spend, leaving out unused unlimited ones."""
    return [
        {"project": scope.name, "window": window, "used_usd": b.used, "limit_usd": b.limit}
        for scope in snapshot.scopes
        if scope.kind == "project"
        for window, b in scope.budgets()
        if b.limit is not None or b.used
    ]


def apply_quota_snapshot(metrics: Metrics, snapshot: QuotaSnapshot) -> None:
    """Set the remaining-requests/tokens gauges of every scope and the budget gauges of
    every project (remaining is None where unlimited)."""
    for scope in snapshot.scopes:
        metrics.set_remaining(
            scope.kind, scope.name, scope.requests.remaining, scope.tokens.remaining
        )
        if scope.kind == "project":
            for window, b in scope.budgets():
                metrics.set_budget(scope.name, window, b.used, b.limit)
