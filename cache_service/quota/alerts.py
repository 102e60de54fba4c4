"""Threshold alerts on calendar limits (budgets, rpd, tpd): which crossings are new, so each
is told once per window, also across a restart."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cache_service.quota.limits import Scope, label

AlertSink = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]
"""Where a ledger sends an alert's payload (a webhook), besides its log."""

# How a limit is named in an alert's message; others read as their name with spaces
# ("daily_budget" → "daily budget").
_WORDS = {"rpd": "requests-per-day limit", "tpd": "tokens-per-day limit"}


@dataclass(frozen=True, slots=True)
class Alert:
    scope_kind: str
    scope_name: str
    limit: str
    window: str
    threshold: float
    used: float
    limit_value: float
    message: str


def payload(alert: Alert) -> dict[str, Any]:
    """An alert as logged and sent to the alert sink (a webhook), whichever ledger fired it."""
    return {
        "event": "quota_alert",
        "scope_kind": alert.scope_kind,
        "scope_name": alert.scope_name,
        "limit": alert.limit,
        "window": alert.window,
        "threshold": alert.threshold,
        "used": alert.used,
        "limit_value": alert.limit_value,
        "message": alert.message,
    }


class AlertTracker:
    """Fires each threshold at most once per (scope, limit, window): a budget hovering around
    80 % produces one alert, not one per request. Only the current window per (scope, limit)
    is remembered, so memory stays bounded as days go by."""

    def __init__(self, thresholds: Sequence[float] = (0.8, 0.95)) -> None:
        if any(t <= 0 for t in thresholds):
            raise ValueError("thresholds must be > 0")
        self.thresholds = sorted(set(thresholds))
        self._fired: dict[tuple[str, str, str], tuple[str, set[float]]] = {}

    def check(
        self, scope: Scope, limit_name: str, window_key: str, used: float, limit: float | None
    ) -> list[Alert]:
        if limit is None or limit <= 0:
            return []
        key = (scope[0], scope[1], limit_name)
        window, fired = self._fired.get(key, (window_key, set()))
        if window != window_key:
            window, fired = window_key, set()
        self._fired[key] = (window, fired)
        alerts = []
        for threshold in self.thresholds:
            if used >= threshold * limit and threshold not in fired:
                fired.add(threshold)
                alerts.append(
                    Alert(
                        *scope,
                        limit_name,
                        window_key,
                        threshold,
                        used,
                        limit,
                        f"{label(scope)} has used {used / limit:.0%} of its "
                        f"{_WORDS.get(limit_name, limit_name.replace('_', ' '))} for "
                        f"{window_key} ({used:g} of {limit:g})",
                    )
                )
        return alerts

    def export_fired(self) -> list[dict[str, Any]]:
        return [
            {"kind": k, "name": n, "limit": lim, "window": w, "thresholds": sorted(f)}
            for (k, n, lim), (w, f) in sorted(self._fired.items())
        ]

    def import_fired(self, data: Iterable[Mapping[str, Any]]) -> None:
        """Restore what fired before a restart; a later window for the same (scope, limit)
        already recorded here wins, so stale records cannot re-arm or suppress anything."""
        for record in data:
            key = (str(record["kind"]), str(record["name"]), str(record["limit"]))
            window = str(record["window"])
            current = self._fired.get(key)
            if current is None or window > current[0]:
                self._fired[key] = (window, {float(t) for t in record["thresholds"]})
            elif window == current[0]:
                current[1].update(float(t) for t in record["thresholds"])
