"""Layered, validated settings (cache_service/settings.py), called directly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cache_service.preflight import config_warnings
from cache_service.pricing import Price, PriceTable
from cache_service.settings import ConfigError, PriceSetting, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CACHE_* variable from the developer's shell may leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("CACHE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "cache.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_valid() -> None:
    s = load_settings()
    assert isinstance(s, Settings)
    assert s.port == 8080
    assert s.host == "127.0.0.1"
    assert s.upstream_url is None
    # Threshold defaults are tuned elsewhere; the loader must keep them, coherent.
    fields = Settings.model_fields
    assert s.similarity_threshold == fields["similarity_threshold"].default
    assert s.min_threshold == fields["min_threshold"].default
    assert 0 < s.min_threshold <= s.similarity_threshold <= 1
    assert s.default_ttl_s <= s.max_ttl_s
    assert s.cache_tool_calls is False
    assert s.prices == {}
    assert s.store_dir == Path("data") / "entries"


def test_yaml_values_are_read(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "port: 9001\n"
        "similarity_threshold: 0.9\n"
        "min_threshold: 0.85\n"
        "cache_tool_calls: true\n"
        f"data_dir: {tmp_path / 'd'}\n"
        "upstream_url: https://api.example.com/v1\n",
    )
    s = load_settings(cfg)
    assert s.port == 9001
    assert s.similarity_threshold == 0.9
    assert s.cache_tool_calls is True
    assert s.data_dir == tmp_path / "d"
    assert s.store_dir == tmp_path / "d" / "entries"
    assert s.upstream_url == "https://api.example.com/v1"
    # Unset keys keep their defaults.
    assert s.search_k == 4


def test_config_file_from_cache_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, "port: 9002\n")
    monkeypatch.setenv("CACHE_CONFIG", str(cfg))
    assert load_settings().port == 9002


def test_config_file_as_str(tmp_path: Path) -> None:
    assert load_settings(str(write(tmp_path, "port: 9003\n"))).port == 9003


def test_empty_yaml_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).port == 8080


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(
        tmp_path,
        "port: 9001\nsimilarity_threshold: 0.95\nmin_threshold: 0.85\nsearch_k: 8\n",
    )
    monkeypatch.setenv("CACHE_PORT", "7000")
    monkeypatch.setenv("CACHE_SIMILARITY_THRESHOLD", "0.9")
    s = load_settings(cfg)
    assert s.port == 7000
    assert s.similarity_threshold == 0.9
    assert s.min_threshold == 0.85  # from the file
    assert s.search_k == 8  # from the file, no env for it


def test_explicit_overrides_beat_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path, "port: 9001\nhost: 0.0.0.0\n")
    monkeypatch.setenv("CACHE_PORT", "7000")
    s = load_settings(cfg, port=6000)
    assert s.port == 6000
    assert s.host == "0.0.0.0"


def test_none_override_does_not_mask_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_PORT", "7000")
    assert load_settings(None, port=None).port == 7000


def test_nested_prices_from_yaml(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "prices:\n"
        "  my-model:\n"
        "    input: 1.5\n"
        "    output: 6\n"
        "  gpt-4o:\n"
        "    input: 2\n"
        "    output: 8\n",
    )
    s = load_settings(cfg)
    assert s.prices == {
        "my-model": PriceSetting(input=1.5, output=6.0),
        "gpt-4o": PriceSetting(input=2.0, output=8.0),
    }


def test_nested_price_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_PRICES__MINE__INPUT", "3")
    monkeypatch.setenv("CACHE_PRICES__MINE__OUTPUT", "4")
    s = load_settings()
    assert s.prices == {"mine": PriceSetting(input=3.0, output=4.0)}


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("similarity_threshold: 2\n", "similarity_threshold"),
        ("similarity_threshold: 0\n", "similarity_threshold"),
        ("port: x\n", "port"),
        ("port: 70000\n", "port"),
        ("search_k: 0\n", "search_k"),
        ("embedder_backend: cuda\n", "embedder_backend"),
        ("not_a_setting: 1\n", "not_a_setting"),
        ("prices:\n  m:\n    input: -1\n    output: 1\n", "prices.m.input"),
        ("prices:\n  m:\n    input: 1\n", "prices.m.output"),
    ],
)
def test_wrong_value_names_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, yaml_text))
    assert key in str(err.value)


def test_wrong_env_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_PORT", "x")
    with pytest.raises(ConfigError, match="port"):
        load_settings()


def test_wrong_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match="search_k"):
        load_settings(None, search_k=1000)


def test_every_wrong_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "port: x\nsearch_k: 0\n"))
    assert "port" in str(err.value)
    assert "search_k" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(write(tmp_path, text))


@pytest.mark.parametrize("text", ["port: [\n", "a: b: c\n", "key: 'unterminated\n"])
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, text))


def test_min_threshold_above_similarity_threshold_is_rejected() -> None:
    with pytest.raises(ConfigError, match="min_threshold"):
        load_settings(None, min_threshold=0.9, similarity_threshold=0.85)
    # Equal is fine.
    s = load_settings(None, min_threshold=0.9, similarity_threshold=0.9)
    assert s.min_threshold == s.similarity_threshold == 0.9


def test_default_ttl_above_max_ttl_is_rejected() -> None:
    with pytest.raises(ConfigError, match="default_ttl_s"):
        load_settings(None, default_ttl_s=100, max_ttl_s=10)


@pytest.mark.parametrize("url", ["api.openai.com/v1", "ftp://x/v1", "localhost:8081"])
def test_upstream_url_needs_a_scheme(url: str) -> None:
    with pytest.raises(ConfigError, match="upstream_url"):
        load_settings(None, upstream_url=url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("http://localhost:8081/v1//", "http://localhost:8081/v1"),
        ("http://localhost:8081/v1", "http://localhost:8081/v1"),
        ("", None),
    ],
)
def test_upstream_url_normalised(url: str, expected: str | None) -> None:
    assert load_settings(None, upstream_url=url).upstream_url == expected


def test_per_day_limits_of_projects_and_upstreams(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            "upstreams:\n"
            "  - {name: primary, base_url: https://api.example.com/v1, rpd: 10000, tpd: 2000000}\n"
            "projects:\n"
            "  - {name: default, rpd: 500, tpd: 100000}\n",
        )
    )
    assert (s.upstreams[0].rpd, s.upstreams[0].tpd) == (10000, 2_000_000)
    assert (s.projects[0].rpd, s.projects[0].tpd) == (500, 100_000)
    assert load_settings().projects == []  # unlimited unless configured
    with pytest.raises(ConfigError, match=r"projects\.0\.rpd"):
        load_settings(write(tmp_path, "projects:\n  - {name: default, rpd: -1}\n"))


def test_config_warnings_name_unset_key_variables_and_unpriced_models() -> None:
    settings = load_settings(
        None,
        upstreams=[
            {"name": "primary", "base_url": "https://a.example/v1", "api_key_env": "A_KEY"},
            {
                "name": "backup",
                "base_url": "https://b.example/v1",
                "api_key_env": "B_KEY",
                "models": ["gpt-4o-mini", "o9-ultra"],
            },
        ],
        projects=[{"name": "p", "downgrade": {"model": "cheap-model"}}],
    )
    warnings = config_warnings(settings, {"B_KEY": "set"})
    assert any("'primary'" in w and "$A_KEY" in w for w in warnings)
    assert not any("B_KEY" in w for w in warnings)
    assert any("'o9-ultra' has no price" in w for w in warnings)
    assert any("'cheap-model' has no price" in w for w in warnings)
    assert not any("gpt-4o-mini" in w for w in warnings)
    priced = settings.model_copy(update={"default_price": {"input": 1.0, "output": 2.0}})
    assert not any("price" in w for w in config_warnings(priced, {"A_KEY": "x"}))


def test_config_prices_may_name_cached_input_and_cache_write_prices() -> None:
    settings = load_settings(
        None,
        prices={
            "mine": {"input": 1.0, "output": 2.0, "cached_input": 0.1, "cache_write": 1.25},
            "plain": {"input": 3.0, "output": 4.0},
        },
    )
    table = PriceTable.with_overrides({k: v.model_dump() for k, v in settings.prices.items()})
    assert table.get("mine") == Price(1.0, 2.0, cached_input=0.1, cache_write=1.25)
    assert table.get("plain") == Price(3.0, 4.0)
    with pytest.raises(ConfigError):
        load_settings(None, prices={"bad": {"input": 1, "output": 1, "cached_input": -1}})
