"""Per-model prices and the dollar arithmetic behind "money saved" and budgets.

The shipped table is `data/prices.json`, made from LiteLLM's price list by `python -m
cache_service prices refresh` (see `price_source`); it is read on first use, not at import.
Operators override or extend it with the config file's `prices:` table.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens one answer reports, the one shape every layer passes on (flavours read it
    from the wire, the quota settles it, the recorder counts it, the cache stores it).

    `prompt` is every input token, whatever its price: OpenAI's `prompt_tokens` (which
    includes the cached ones) or Anthropic's `input_tokens` plus its cache reads and writes
    (which it reports apart). `cached` and `cache_write` say how many of them the provider
    read from or wrote to its prompt cache, billed at their own prices."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def repeat(self) -> Usage:
        """What the same call made again would be billed, which is what a cache hit saves.
        Counted low on purpose: every prompt token this call read from or wrote to the
        provider's prompt cache is taken as read from it next time (cached-input price),
        though the cache may have expired by then; the rest at full price. A saving is
        then never overstated."""
        cached = min(self.prompt, max(self.cached, 0) + max(self.cache_write, 0))
        return Usage(self.prompt, self.completion, cached)


NO_USAGE = Usage()
"""An answer that reported no usage (or a hit-less outcome)."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. `cached_input` and `cache_write` are the provider's prompt
    cache prices; None where it has none, and such tokens are then priced as input."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None

    def cost(self, usage: Usage) -> float:
        # Clamped so an answer claiming more cached tokens than prompt tokens cannot make
        # the plain part negative (a hostile or broken upstream must not earn credit).
        cached = min(max(usage.cached, 0), usage.prompt)
        written = min(max(usage.cache_write, 0), usage.prompt - cached)
        plain = usage.prompt - cached - written
        read_rate = self.input if self.cached_input is None else self.cached_input
        write_rate = self.input if self.cache_write is None else self.cache_write
        dollars = (
            plain * self.input
            + cached * read_rate
            + written * write_rate
            + usage.completion * self.output
        )
        return dollars / 1_000_000


def price_of(spec: Mapping[str, Any]) -> Price:
    """A Price from a mapping with `input`, `output` and optionally `cached_input` and
    `cache_write` (a data file row, a config entry)."""

    def optional(key: str) -> float | None:
        value = spec.get(key)
        return None if value is None else float(value)

    return Price(
        float(spec["input"]),
        float(spec["output"]),
        optional("cached_input"),
        optional("cache_write"),
    )


def prices_from_table(table: Mapping[str, Any]) -> dict[str, Price]:
    """The prices of a data file's content (`price_source.build`'s shape)."""
    models: Mapping[str, Mapping[str, Any]] = table["models"]
    return {name: price_of(spec) for name, spec in models.items()}


@functools.cache
def default_prices() -> Mapping[str, Price]:
    """The shipped table, read once on first use (read-only: overrides make a copy)."""
    text = resources.files("cache_service").joinpath("data/prices.json").read_text("utf-8")
    return MappingProxyType(prices_from_table(json.loads(text)))


# What may follow a known name for a model to price like it: version and date parts
# (``-2024-08-06``, ``-20250514``, ``-1-20250805``, ``-v2``, ``-latest``), never another
# word. A bare prefix match priced ``o1-pro`` as ``o1``, ten times too low for a budget.
_SNAPSHOT_SUFFIX = re.compile(r"(?:-(?:v?\d+(?:\.\d+)*|latest|preview))*(?:@\d{8})?")


class PriceTable:
    """Looks a model up by exact name, then by the longest known name it extends with a
    version or date only, so dated snapshots (``gpt-4o-2024-08-06``) price like their family
    without listing every date, and a different model (``o1-pro``) is never priced as
    another (unlisted, it counts at `default_price`, and `serve` warns)."""

    def __init__(self, prices: Mapping[str, Price], default: Price | None = None) -> None:
        self._prices = dict(prices)
        self._by_length = sorted(self._prices, key=len, reverse=True)
        self.default = default

    def get(self, model: str) -> Price | None:
        price = self._prices.get(model)
        if price is not None:
            return price
        for name in self._by_length:
            if _extends(model, name):
                return self._prices[name]
        return self.default

    def cost(self, model: str, usage: Usage) -> float:
        price = self.get(model)
        return 0.0 if price is None else price.cost(usage)

    @classmethod
    def with_overrides(
        cls, overrides: Mapping[str, Mapping[str, Any]] | None, default: Price | None = None
    ) -> PriceTable:
        """The shipped table with the config's `prices:` on top. An override replaces the
        model's whole price: a cached-input price it leaves out is None (priced as input),
        never the shipped one, which may belong to a different price list. It covers the
        family's dated snapshots too: the shipped table lists many (`gpt-4o-2024-08-06`),
        and an operator pricing `gpt-4o` means every `gpt-4o` they call."""
        shipped = default_prices()
        ours = {model: price_of(p) for model, p in (overrides or {}).items()}
        prices = {
            name: price
            for name, price in shipped.items()
            if not any(_extends(name, model) for model in ours)
        }
        prices.update(ours)
        return cls(prices, default)


def _extends(name: str, family: str) -> bool:
    """`name` is `family` followed by a version or date only."""
    return (
        name != family
        and name.startswith(family)
        and _SNAPSHOT_SUFFIX.fullmatch(name, len(family)) is not None
    )
