"""The shipped price table, made from LiteLLM's `model_prices_and_context_window.json`. Pure.

LiteLLM's table is the best-kept public list of model prices; it holds thousands of entries
(every provider, region, fine-tune and image size) in USD per token. This module keeps what
the sidecar can be asked to price: the models OpenAI and Anthropic serve at their own APIs
(chat, Responses, embeddings), under the names callers send, in USD per million tokens, with
the prompt-cache prices where the provider has them. `price_refresh` does the fetching.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROVIDERS = frozenset({"openai", "anthropic"})
MODES = frozenset({"chat", "responses", "embedding"})

# LiteLLM's field → ours. Each is USD per token there, per million tokens here.
FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write",
}


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """Where a table came from, written into its header so a diff of the data file says
    which upstream release changed a price."""

    package: str
    version: str
    file: str
    sha256: str
    fetched: str
    """ISO date (UTC) of the refresh."""


def per_million(per_token: float) -> float:
    # 2.5e-08 * 1e6 is 0.024999999999999998: ten significant digits give back the price as
    # published, so the data file reads like a price list and diffs stay quiet.
    return float(f"{per_token * 1_000_000:.10g}")


def _name(key: str, provider: str) -> str | None:
    """The name a caller sends for LiteLLM's `key`, or None for a variant that is not a
    model name at the provider's own API (a fine-tune `ft:...`, an image size, a region)."""
    name = key.removeprefix(provider + "/")
    if "/" in name or ":" in name:
        return None
    return name


def _prices(spec: Mapping[str, Any]) -> dict[str, float] | None:
    out: dict[str, float] = {}
    for theirs, ours in FIELDS.items():
        value = spec.get(theirs)
        # bool is an int to Python; a string is the sample spec's prose.
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            out[ours] = per_million(float(value))
    if "input" not in out:
        return None  # unpriced upstream: better missing (serve warns) than $0
    out.setdefault("output", 0.0)  # embeddings have no completion
    return out


def select(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The models of `raw` (LiteLLM's table) this sidecar prices, by the provider's name,
    sorted. Where a prefixed key (`openai/gpt-4o`) and a bare one name the same model, the
    bare one (the provider's own listing) wins whatever their order in the file."""
    chosen: dict[str, tuple[bool, dict[str, Any]]] = {}
    for key, spec in raw.items():
        if not isinstance(spec, Mapping):
            continue
        provider = spec.get("litellm_provider")
        if provider not in PROVIDERS or spec.get("mode") not in MODES:
            continue
        name = _name(key, provider)
        prices = _prices(spec)
        if name is None or prices is None:
            continue
        bare = name == key
        if name in chosen and (chosen[name][0] or not bare):
            continue
        chosen[name] = (bare, {"provider": provider, "mode": spec["mode"], **prices})
    return {name: chosen[name][1] for name in sorted(chosen)}


def build(raw: Mapping[str, Any], source: SourceInfo) -> dict[str, Any]:
    """The data file's content: a header naming the source, then the models."""
    models = select(raw)
    return {
        "source": {
            "package": source.package,
            "version": source.version,
            "file": source.file,
            "sha256": source.sha256,
            "fetched": source.fetched,
            "refresh": "python -m cache_service prices refresh  (or: make prices)",
        },
        "unit": "USD per 1M tokens",
        "count": len(models),
        "models": models,
    }
