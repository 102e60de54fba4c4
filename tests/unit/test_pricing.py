"""Model prices and cost arithmetic (cache_service/pricing.py), called directly."""

from __future__ import annotations

import pytest

from cache_service.pricing import DEFAULT_PRICES, Price, PriceTable


def test_price_cost_is_per_million_tokens() -> None:
    p = Price(input=2.50, output=10.00)
    assert p.cost(1_000_000, 0) == pytest.approx(2.50)
    assert p.cost(0, 1_000_000) == pytest.approx(10.00)
    # 1000 prompt tokens at $2.50/M + 500 completion tokens at $10/M
    assert p.cost(1000, 500) == pytest.approx(0.0025 + 0.005)
    assert p.cost(0, 0) == 0.0


def test_exact_model() -> None:
    table = PriceTable(DEFAULT_PRICES)
    assert table.get("gpt-4o") == Price(2.50, 10.00)
    assert table.get("gpt-4o-mini") == Price(0.15, 0.60)
    # gpt-4o-mini: $0.15 / $0.60 per million
    assert table.cost("gpt-4o-mini", 2000, 1000) == pytest.approx((2000 * 0.15 + 1000 * 0.60) / 1e6)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # not gpt-4o, a shorter prefix
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("o3-2025-04-16", "o3"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-haiku-20240307", "claude-3-haiku"),
        ("claude-opus-4-20250514", "claude-opus-4"),
    ],
)
def test_dated_snapshot_prices_as_longest_prefix(model: str, family: str) -> None:
    table = PriceTable(DEFAULT_PRICES)
    assert table.get(model) == DEFAULT_PRICES[family]


def test_mini_snapshot_is_not_priced_as_the_big_model() -> None:
    table = PriceTable(DEFAULT_PRICES)
    cost = table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000)
    assert cost == pytest.approx(0.15 + 0.60)
    assert cost != pytest.approx(2.50 + 10.00)


def test_longest_prefix_wins_regardless_of_insertion_order() -> None:
    # Shorter name inserted last: a first-match scan in dict order would pick it.
    table = PriceTable({"m-large": Price(5, 5), "m": Price(1, 1)})
    assert table.get("m-large-2025") == Price(5, 5)
    assert table.get("m-2025") == Price(1, 1)


def test_unknown_model_costs_nothing_without_default() -> None:
    table = PriceTable(DEFAULT_PRICES)
    assert table.get("llama-3-70b") is None
    assert table.cost("llama-3-70b", 1000, 1000) == 0.0
    # A known name as a suffix is not a prefix match.
    assert table.get("my-gpt-4o") is None


def test_unknown_model_uses_default_when_given() -> None:
    table = PriceTable(DEFAULT_PRICES, default=Price(1.0, 2.0))
    assert table.get("llama-3-70b") == Price(1.0, 2.0)
    assert table.cost("llama-3-70b", 1_000_000, 500_000) == pytest.approx(1.0 + 1.0)
    # A known model still uses its own price.
    assert table.get("gpt-4o") == Price(2.50, 10.00)


def test_overrides_replace_and_extend_defaults() -> None:
    table = PriceTable.with_overrides(
        {"gpt-4o": {"input": 1.0, "output": 4.0}, "my-local": {"input": 0.01, "output": 0.02}}
    )
    assert table.get("gpt-4o") == Price(1.0, 4.0)
    assert table.get("gpt-4o-2024-08-06") == Price(1.0, 4.0)  # prefix sees the override
    assert table.get("my-local") == Price(0.01, 0.02)
    assert table.get("my-local-v2") == Price(0.01, 0.02)
    # Untouched defaults remain, and gpt-4o-mini is not shadowed by the gpt-4o override.
    assert table.get("gpt-4o-mini") == Price(0.15, 0.60)
    assert table.get("gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)


def test_overrides_do_not_mutate_shipped_defaults() -> None:
    before = dict(DEFAULT_PRICES)
    PriceTable.with_overrides({"gpt-4o": {"input": 99, "output": 99}})
    assert before == DEFAULT_PRICES
    assert PriceTable.with_overrides(None).get("gpt-4o") == Price(2.50, 10.00)


def test_override_with_default() -> None:
    table = PriceTable.with_overrides({}, default=Price(3, 3))
    assert table.cost("unknown", 1_000_000, 0) == pytest.approx(3.0)


def test_table_is_isolated_from_the_mapping_it_was_built_from() -> None:
    prices = {"a": Price(1, 1)}
    table = PriceTable(prices)
    prices["b"] = Price(2, 2)
    assert table.get("b") is None


@pytest.mark.parametrize("model", ["o1-pro", "gpt-4o-audio-preview", "gpt-5-codex", "o3-deep"])
def test_another_model_that_shares_a_prefix_is_unpriced_not_mispriced(model: str) -> None:
    """o1-pro costs ten times o1: priced as o1, a budget would let ten times the spend."""
    assert PriceTable.with_overrides(None).get(model) is None
    assert PriceTable.with_overrides(None, Price(9.0, 9.0)).get(model) == Price(9.0, 9.0)
