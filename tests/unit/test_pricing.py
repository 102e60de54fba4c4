"""Model prices and cost arithmetic (cache_service/pricing.py), called directly, and the
shipped table (cache_service/data/prices.json) they load."""

from __future__ import annotations

import pytest

from cache_service.pricing import Price, PriceTable, Usage, default_prices

DEFAULT_PRICES = default_prices()


def test_price_cost_is_per_million_tokens() -> None:
    p = Price(input=2.50, output=10.00)
    assert p.cost(Usage(1_000_000, 0)) == pytest.approx(2.50)
    assert p.cost(Usage(0, 1_000_000)) == pytest.approx(10.00)
    # 1000 prompt tokens at $2.50/M + 500 completion tokens at $10/M
    assert p.cost(Usage(1000, 500)) == pytest.approx(0.0025 + 0.005)
    assert p.cost(Usage()) == 0.0


def test_exact_model() -> None:
    table = PriceTable(DEFAULT_PRICES)
    assert table.get("gpt-4o") == Price(2.50, 10.00, cached_input=1.25)
    assert table.get("gpt-4o-mini") == Price(0.15, 0.60, cached_input=0.075)
    # gpt-4o-mini: $0.15 / $0.60 per million
    cost = table.cost("gpt-4o-mini", Usage(2000, 1000))
    assert cost == pytest.approx((2000 * 0.15 + 1000 * 0.60) / 1e6)


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
        ("gpt-5.4-pro-2026-09-01", "gpt-5.4-pro"),  # a snapshot the table does not list
        ("claude-opus-4-7-20261201", "claude-opus-4-7"),
        ("claude-haiku-4-5-latest", "claude-haiku-4-5"),
    ],
)
def test_dated_snapshot_prices_as_longest_prefix(model: str, family: str) -> None:
    table = PriceTable(DEFAULT_PRICES)
    assert table.get(model) == DEFAULT_PRICES[family]


def test_mini_snapshot_is_not_priced_as_the_big_model() -> None:
    table = PriceTable(DEFAULT_PRICES)
    cost = table.cost("gpt-4o-mini-2024-07-18", Usage(1_000_000, 1_000_000))
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
    assert table.cost("llama-3-70b", Usage(1000, 1000)) == 0.0
    # A known name as a suffix is not a prefix match.
    assert table.get("my-gpt-4o") is None


def test_unknown_model_uses_default_when_given() -> None:
    table = PriceTable(DEFAULT_PRICES, default=Price(1.0, 2.0))
    assert table.get("llama-3-70b") == Price(1.0, 2.0)
    assert table.cost("llama-3-70b", Usage(1_000_000, 500_000)) == pytest.approx(1.0 + 1.0)
    # A known model still uses its own price.
    assert table.get("gpt-4o") == DEFAULT_PRICES["gpt-4o"]


def test_overrides_replace_and_extend_defaults() -> None:
    table = PriceTable.with_overrides(
        {"gpt-4o": {"input": 1.0, "output": 4.0}, "my-local": {"input": 0.01, "output": 0.02}}
    )
    assert table.get("gpt-4o") == Price(1.0, 4.0)
    assert table.get("gpt-4o-2024-08-06") == Price(1.0, 4.0)  # prefix sees the override
    assert table.get("my-local") == Price(0.01, 0.02)
    assert table.get("my-local-v2") == Price(0.01, 0.02)
    # Untouched defaults remain, and gpt-4o-mini is not shadowed by the gpt-4o override.
    assert table.get("gpt-4o-mini") == DEFAULT_PRICES["gpt-4o-mini"]
    assert table.get("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]


def test_an_override_of_a_family_covers_its_shipped_snapshots_not_other_overrides() -> None:
    assert "gpt-4o-2024-08-06" in DEFAULT_PRICES  # listed by the shipped table itself
    table = PriceTable.with_overrides(
        {"gpt-4o": {"input": 1.0, "output": 4.0}, "gpt-4o-2024-05-13": {"input": 7, "output": 7}}
    )
    assert table.get("gpt-4o-2024-08-06") == Price(1.0, 4.0)
    assert table.get("gpt-4o-2024-05-13") == Price(7.0, 7.0)
    assert table.get("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini-2024-07-18"]


def test_overrides_do_not_mutate_shipped_defaults() -> None:
    before = dict(DEFAULT_PRICES)
    PriceTable.with_overrides({"gpt-4o": {"input": 99, "output": 99}})
    assert before == DEFAULT_PRICES
    assert PriceTable.with_overrides(None).get("gpt-4o") == DEFAULT_PRICES["gpt-4o"]


def test_override_with_default() -> None:
    table = PriceTable.with_overrides({}, default=Price(3, 3))
    assert table.cost("unknown", Usage(1_000_000, 0)) == pytest.approx(3.0)


def test_table_is_isolated_from_the_mapping_it_was_built_from() -> None:
    prices = {"a": Price(1, 1)}
    table = PriceTable(prices)
    prices["b"] = Price(2, 2)
    assert table.get("b") is None


@pytest.mark.parametrize("model", ["gpt-4o-audio-preview", "o3-deep", "gpt-5-turbo"])
def test_another_model_that_shares_a_prefix_is_unpriced_not_mispriced(model: str) -> None:
    """A listed family's name followed by another word is another model."""
    assert PriceTable.with_overrides(None).get(model) is None
    assert PriceTable.with_overrides(None, Price(9.0, 9.0)).get(model) == Price(9.0, 9.0)


def test_o1_pro_is_priced_as_itself_not_as_o1() -> None:
    """o1-pro costs ten times o1: priced as o1, a budget would let ten times the spend."""
    table = PriceTable.with_overrides(None)
    pro, o1 = table.get("o1-pro"), table.get("o1")
    assert pro is not None and o1 is not None
    assert pro == DEFAULT_PRICES["o1-pro"]
    assert (pro.input, pro.output) == (150.0, 600.0)
    assert table.get("o1-pro-2025-03-19") == pro
    assert pro.input >= 10 * o1.input


# ------------------------------------------------------------------ cached input


def test_cached_prompt_tokens_cost_the_cached_input_price() -> None:
    p = Price(input=2.0, output=8.0, cached_input=0.5)
    # 1M prompt tokens, 600k of them cached: 400k at $2 + 600k at $0.50, plus 100k out at $8.
    assert p.cost(Usage(1_000_000, 100_000, cached=600_000)) == pytest.approx(0.8 + 0.3 + 0.8)


def test_without_a_cached_price_cached_tokens_cost_the_input_price() -> None:
    p = Price(input=2.0, output=8.0)
    assert p.cost(Usage(1_000_000, 0, cached=600_000)) == pytest.approx(2.0)
    assert p.cost(Usage(1_000_000, 0, cache_write=600_000)) == pytest.approx(2.0)


def test_cache_writes_cost_the_cache_write_price() -> None:
    p = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    usage = Usage(1_000_000, 0, cached=500_000, cache_write=250_000)
    assert p.cost(usage) == pytest.approx(0.75 + 0.15 + 0.9375)


def test_more_cached_tokens_than_prompt_tokens_earn_no_credit() -> None:
    p = Price(input=2.0, output=8.0, cached_input=0.5)
    assert p.cost(Usage(1000, 0, cached=5000)) == pytest.approx(1000 * 0.5 / 1e6)
    assert p.cost(Usage(1000, 0, cached=-5000)) == pytest.approx(1000 * 2.0 / 1e6)
    assert p.cost(Usage(1000, 0, cached=800, cache_write=800)) >= 0


def test_a_repeat_finds_what_the_call_read_or_wrote_in_the_prompt_cache() -> None:
    """A hit's saving: the call made again, everything it cached read at the cached price
    (the lowest it could cost), so a saving is never overstated."""
    assert Usage(1000, 50, cached=600, cache_write=300).repeat() == Usage(1000, 50, cached=900)
    assert Usage(1000, 50, cached=900, cache_write=900).repeat() == Usage(1000, 50, cached=1000)
    assert Usage(1000, 50).repeat() == Usage(1000, 50)
    p = Price(input=2.0, output=8.0, cached_input=0.5, cache_write=2.5)
    original = Usage(1_000_000, 0, cached=0, cache_write=1_000_000)
    assert p.cost(original.repeat()) == pytest.approx(0.5)
    assert p.cost(original) == pytest.approx(2.5)


def test_an_override_replaces_the_whole_price_cached_input_included() -> None:
    """An operator's negotiated input price must not be paired with the shipped cached one."""
    table = PriceTable.with_overrides({"gpt-4o": {"input": 1.0, "output": 4.0}})
    assert table.get("gpt-4o") == Price(1.0, 4.0)
    assert table.cost("gpt-4o", Usage(1_000_000, 0, cached=1_000_000)) == pytest.approx(1.0)
    table = PriceTable.with_overrides(
        {"gpt-4o": {"input": 1.0, "output": 4.0, "cached_input": 0.1, "cache_write": None}}
    )
    assert table.get("gpt-4o") == Price(1.0, 4.0, cached_input=0.1)


# ------------------------------------------------------------------ the shipped table


def test_shipped_table_prices_the_models_the_readme_and_tests_name() -> None:
    table = PriceTable(DEFAULT_PRICES)
    assert table.get("gpt-4.1") == Price(2.0, 8.0, cached_input=0.5)
    assert table.get("o1") == Price(15.0, 60.0, cached_input=7.5)
    assert table.get("text-embedding-3-small") == Price(0.02, 0.0)
    assert table.get("claude-sonnet-4-5") == Price(3.0, 15.0, cached_input=0.3, cache_write=3.75)
    assert table.get("claude-sonnet-4-5-20250929") == table.get("claude-sonnet-4-5")


def test_shipped_table_keeps_provider_names_only() -> None:
    names = set(DEFAULT_PRICES)
    assert not [n for n in names if "/" in n or ":" in n]  # no openai/..., ft:..., regions
    assert "ft:gpt-4o-mini-2024-07-18" not in names
    assert not [n for n in names if n.startswith(("dall-e", "tts-", "whisper", "gpt-image"))]
    assert all(p.input > 0 and p.output >= 0 for p in DEFAULT_PRICES.values())


def test_shipped_table_is_read_once_and_read_only() -> None:
    assert default_prices() is DEFAULT_PRICES
    with pytest.raises(TypeError):
        DEFAULT_PRICES["gpt-4o"] = Price(0, 0)  # type: ignore[index]


def test_importing_pricing_reads_nothing() -> None:
    """The table is read on first use: `python -m cache_service --help` and every module
    importing pricing pay nothing for it."""
    import subprocess
    import sys

    code = (
        "import cache_service.pricing as p, sys; "
        "sys.exit(1 if p.default_prices.cache_info().currsize else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
