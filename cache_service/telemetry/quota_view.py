"""Adapters from the quota manager's snapshot (`QuotaManager.snapshot()`, a plain dict) to
the metrics' gauges and to the report's budget rows.

The only telemetry code that knows the snapshot's shape, kept apart so that a change to that
shape touches this file alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cache_service.telemetry.metrics import Metrics


_BUDGET_WINDOWS = (("daily", "daily_budget"), ("monthly", "monthly_budget"))


def budgets_of(quota_snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """Project budgets from `QuotaManager.snapshot()`, as `build_report(budgets=...)` takes
    them: windows with a limit or with spend, leaving out unused unlimited ones."""
    out: list[dict[str, Any]] = []
    for scope in quota_snapshot.get("scopes", []):
        if scope.get("kind") != "project":
            continue
        for window, key in _BUDGET_WINDOWS:
            b = scope.get(key) or {}
            if b.get("limit") is not None or b.get("used"):
                out.append(
                    {
                        "project": scope["name"],
                        "window": window,
                        "used_usd": b.get("used", 0.0),
                        "limit_usd": b.get("limit"),
                    }
                )
    return out


def apply_quota_snapshot(metrics: Metrics, quota_snapshot: dict[str, Any]) -> None:
    """Set the remaining-requests/tokens gauges of every scope and the budget gauges of
    every project from `QuotaManager.snapshot()` (remaining is None where unlimited)."""
    for scope in quota_snapshot.get("scopes", []):
        kind, name = scope["kind"], scope["name"]
        metrics.set_remaining(
            kind,
            name,
            (scope.get("requests") or {}).get("remaining"),
            (scope.get("tokens") or {}).get("remaining"),
        )
        if kind == "project":
            for window, key in _BUDGET_WINDOWS:
                b = scope.get(key) or {}
                metrics.set_budget(name, window, float(b.get("used") or 0.0), b.get("limit"))
