"""Money as integer nano-dollars.

Budgets are kept in integers so their invariants hold exactly instead of to within float
rounding: ten $0.10 requests fit a $1.00 budget, never 9 or 11. Dollars (floats) are what
callers pass in and read out; conversion happens only at that edge.
"""

from __future__ import annotations

NANO = 1_000_000_000
"""Nano-dollars per dollar."""


def to_nano(usd: float) -> int:
    return round(usd * NANO)


def to_usd(nano: int) -> float:
    return nano / NANO


def format_usd(value: float) -> str:
    """``"$1,234.50"``, for messages people read."""
    return f"${value:,.2f}"
