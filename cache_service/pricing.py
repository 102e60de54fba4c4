"""Per-model prices and the dollar arithmetic behind "money saved" and budgets. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


# List prices (USD / 1M tokens) of common models, as published by their vendors in 2025.
# Operators override or extend them in the config file's `prices:` table.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o1": Price(15.00, 60.00),
    "o1-mini": Price(1.10, 4.40),
    "o3-pro": Price(20.00, 80.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-3-5-sonnet": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-haiku-4": Price(1.00, 5.00),
    "claude-opus-4": Price(15.00, 75.00),
    "claude-opus-4-5": Price(5.00, 25.00),
    "claude-3-haiku": Price(0.25, 1.25),
    # Embeddings: input only (what a cached /v1/embeddings answer saves).
    "text-embedding-3-small": Price(0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.0),
}


# What may follow a known name for a model to price like it: version and date parts
# (``-2024-08-06``, ``-20250514``, ``-1-20250805``, ``-v2``, ``-latest``), never another
# word. A bare prefix match priced ``o1-pro`` as ``o1``, ten times too low for a budget.
_SNAPSHOT_SUFFIX = re.compile(r"(?:-(?:v?\d+(?:\.\d+)*|latest|preview))*(?:@\d{8})?")


class PriceTable:
    """Looks a model up by exact name, then by the longest known name it extends with a
    version or date only, so dated snapshots (``gpt-4o-2024-08-06``) price like their family
    without listing every date, and a different model (``o1-pro``) is unpriced rather than
    mispriced (it then counts at `default_price`, and `serve` warns)."""

    def __init__(self, prices: Mapping[str, Price], default: Price | None = None) -> None:
        self._prices = dict(prices)
        self._by_length = sorted(self._prices, key=len, reverse=True)
        self.default = default

    def get(self, model: str) -> Price | None:
        price = self._prices.get(model)
        if price is not None:
            return price
        for name in self._by_length:
            if model.startswith(name) and _SNAPSHOT_SUFFIX.fullmatch(model, len(name)):
                return self._prices[name]
        return self.default

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.get(model)
        return 0.0 if price is None else price.cost(prompt_tokens, completion_tokens)

    @classmethod
    def with_overrides(
        cls, overrides: Mapping[str, Mapping[str, float]] | None, default: Price | None = None
    ) -> PriceTable:
        prices = dict(DEFAULT_PRICES)
        for model, p in (overrides or {}).items():
            prices[model] = Price(float(p["input"]), float(p["output"]))
        return cls(prices, default)
