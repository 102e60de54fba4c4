"""The shipped price table made from LiteLLM's (cache_service/price_source.py, pure) and the
refresh that writes it (cache_service/price_refresh.py), from a small LiteLLM-shaped fixture:
nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from cache_service.__main__ import main
from cache_service.price_refresh import MEMBERS, RefreshError, read_source, refresh
from cache_service.price_source import SourceInfo, build, per_million, select
from cache_service.pricing import Price, PriceTable, prices_from_table

# LiteLLM's shape: USD per token, provider and mode per entry, plus what must be left out.
LITELLM: dict[str, Any] = {
    "sample_spec": {
        "input_cost_per_token": 0.0,
        "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
        "mode": "one of: chat, embedding, completion",
    },
    "gpt-4o": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
        "input_cost_per_token_batches": 1.25e-06,
    },
    # The same name behind litellm's prefix, listed first and priced differently: the
    # provider's own (bare) listing wins.
    "openai/gpt-4o-mini": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 9e-06,
        "output_cost_per_token": 9e-06,
    },
    "gpt-4o-mini": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 1.5e-07,
        "output_cost_per_token": 6e-07,
        "cache_read_input_token_cost": 7.5e-08,
    },
    # Only under the prefix: kept, under the provider's name.
    "openai/gpt-5-nano": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 5e-08,
        "output_cost_per_token": 4e-07,
    },
    "o1-pro": {
        "litellm_provider": "openai",
        "mode": "responses",
        "input_cost_per_token": 0.00015,
        "output_cost_per_token": 0.0006,
    },
    "text-embedding-3-small": {
        "litellm_provider": "openai",
        "mode": "embedding",
        "input_cost_per_token": 2e-08,
    },
    "claude-sonnet-4-5": {
        "litellm_provider": "anthropic",
        "mode": "chat",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
        "cache_creation_input_token_cost": 3.75e-06,
    },
    # Left out: fine-tunes, image sizes, other providers' copies, other modes, no price.
    "ft:gpt-4o-mini-2024-07-18": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 3e-07,
        "output_cost_per_token": 1.2e-06,
    },
    "low/1024-x-1024/gpt-image-1": {
        "litellm_provider": "openai",
        "mode": "image_generation",
        "input_cost_per_token": 1e-05,
    },
    "azure/gpt-4o": {
        "litellm_provider": "azure",
        "mode": "chat",
        "input_cost_per_token": 2.75e-06,
        "output_cost_per_token": 1.1e-05,
    },
    "anthropic.claude-sonnet-4-5-20250929-v1:0": {
        "litellm_provider": "bedrock_converse",
        "mode": "chat",
        "input_cost_per_token": 3.3e-06,
        "output_cost_per_token": 1.65e-05,
    },
    "tts-1": {"litellm_provider": "openai", "mode": "audio_speech", "input_cost_per_character": 1},
    "openai/container": {"litellm_provider": "openai", "mode": "chat"},
    "gpt-bool": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": True},
}

SOURCE = SourceInfo("litellm", "1.2.3", MEMBERS[0], "ab" * 32, "2026-01-02")


def test_select_keeps_openai_and_anthropic_models_by_the_providers_names() -> None:
    assert list(select(LITELLM)) == [
        "claude-sonnet-4-5",
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-5-nano",
        "o1-pro",
        "text-embedding-3-small",
    ]


def test_prices_are_per_million_tokens_with_cache_prices_where_listed() -> None:
    models = select(LITELLM)
    assert models["gpt-4o"] == {
        "provider": "openai",
        "mode": "chat",
        "input": 2.5,
        "output": 10.0,
        "cached_input": 1.25,
    }
    assert models["claude-sonnet-4-5"] == {
        "provider": "anthropic",
        "mode": "chat",
        "input": 3.0,
        "output": 15.0,
        "cached_input": 0.3,
        "cache_write": 3.75,
    }
    assert models["o1-pro"] == {"provider": "openai", "mode": "responses", "input": 150.0,
                                "output": 600.0}  # fmt: skip
    assert models["text-embedding-3-small"]["output"] == 0.0  # embeddings: input only


def test_the_bare_listing_wins_over_the_prefixed_one_in_either_order() -> None:
    assert select(LITELLM)["gpt-4o-mini"]["input"] == 0.15
    reordered = dict(reversed(list(LITELLM.items())))
    assert select(reordered)["gpt-4o-mini"]["input"] == 0.15
    assert select(reordered) == select(LITELLM)


def test_per_million_gives_back_the_published_price() -> None:
    assert 2.5e-08 * 1_000_000 != 0.025  # the float noise the rounding removes
    assert per_million(2.5e-08) == 0.025
    assert per_million(1.25e-06) == 1.25
    assert per_million(7.5e-08) == 0.075
    assert per_million(0.0) == 0.0


def test_build_records_the_source_and_loads_as_prices() -> None:
    table = build(LITELLM, SOURCE)
    assert table["source"]["package"] == "litellm"
    assert table["source"]["version"] == "1.2.3"
    assert table["source"]["file"] == MEMBERS[0]
    assert table["source"]["sha256"] == "ab" * 32
    assert table["source"]["fetched"] == "2026-01-02"
    assert "prices refresh" in table["source"]["refresh"]
    assert table["count"] == 6
    prices = prices_from_table(json.loads(json.dumps(table)))
    assert prices["claude-sonnet-4-5"] == Price(3.0, 15.0, cached_input=0.3, cache_write=3.75)
    assert prices["o1-pro"] == Price(150.0, 600.0)


# ------------------------------------------------------------------ the refresh (files only)


def wheel(tmp_path: Path, raw: bytes, member: str = MEMBERS[0]) -> Path:
    path = tmp_path / "litellm-1.2.3-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("litellm/__init__.py", "")
        z.writestr(member, raw)
    return path


def test_refresh_from_a_wheel_writes_the_filtered_table(tmp_path: Path) -> None:
    raw = json.dumps(LITELLM).encode()
    out = tmp_path / "prices.json"
    table = refresh(wheel(tmp_path, raw), out)
    written = json.loads(out.read_text())
    assert written == table
    assert written["source"]["version"] == "1.2.3"
    assert written["source"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert list(written["models"]) == list(select(LITELLM))
    # One model per line, so a refresh's diff lists the changed prices.
    assert sum('"provider"' in line for line in out.read_text().splitlines()) == 6
    assert not list(tmp_path.glob("*.tmp"))


def test_refresh_from_the_json_itself(tmp_path: Path) -> None:
    src = tmp_path / "model_prices_and_context_window.json"
    src.write_text(json.dumps(LITELLM))
    data, info = read_source(src)
    assert data == src.read_bytes()
    assert info.version == "unknown" and info.file == src.name
    out = tmp_path / "prices.json"
    assert main(["prices", "refresh", "--from", str(src), "--out", str(out)]) == 0
    assert PriceTable(prices_from_table(json.loads(out.read_text()))).get("gpt-4o") == Price(
        2.5, 10.0, cached_input=1.25
    )


def test_a_source_with_no_model_leaves_the_table_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "prices.json"
    out.write_text("kept")
    with pytest.raises(RefreshError, match="no OpenAI or Anthropic model"):
        azure_only = json.dumps({"azure/gpt-4o": LITELLM["azure/gpt-4o"]}).encode()
        refresh(wheel(tmp_path, azure_only), out)
    assert out.read_text() == "kept"
    missing = tmp_path / "other" / "litellm-9-py3-none-any.whl"
    missing.parent.mkdir()
    with zipfile.ZipFile(missing, "w") as z:
        z.writestr("litellm/__init__.py", "")
    assert main(["prices", "refresh", "--from", str(missing), "--out", str(out)]) == 1
    assert out.read_text() == "kept"
