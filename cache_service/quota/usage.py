"""Typed snapshots of quota use: what any ledger reports and every reader (the quota API,
metrics, reports, downgrade decisions) reads, instead of dicts parsed back by other modules.
`as_json()` gives the `GET /v1/quota` shape. Reset times are epoch seconds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cache_service.quota.limits import Limits


@dataclass(frozen=True, slots=True)
class RateUse:
    """A sliding 60 s window (rpm or tpm)."""

    used: int
    limit: int | None
    remaining: int | None
    reset_at: float
    """When everything now in the window will have aged out."""
    reset_in_s: float
    window_s: float


@dataclass(frozen=True, slots=True)
class DayUse:
    """Requests or tokens of the current UTC day (rpd or tpd)."""

    window: str
    used: int
    """Settled plus held."""
    settled: int
    held: int
    limit: int | None
    remaining: int | None
    reset_at: float


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """Dollars of the current UTC day or month."""

    window: str
    used: float
    """Spent plus held."""
    spent: float
    held: float
    limit: float | None
    remaining: float | None
    reset_at: float


@dataclass(frozen=True, slots=True)
class ScopeUse:
    kind: str
    name: str
    limits: Limits
    requests: RateUse
    tokens: RateUse
    daily_requests: DayUse
    daily_tokens: DayUse
    daily_budget: BudgetUse
    monthly_budget: BudgetUse

    def budgets(self) -> tuple[tuple[str, BudgetUse], ...]:
        return (("daily", self.daily_budget), ("monthly", self.monthly_budget))

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class QuotaSnapshot:
    now: float
    in_flight: int
    scopes: tuple[ScopeUse, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "in_flight": self.in_flight,
            "scopes": [s.as_json() for s in self.scopes],
        }
