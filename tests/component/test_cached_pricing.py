"""Prompt-cache pricing through the real request path: an upstream that reports cached
prompt tokens (each format in its own shape) is charged for them at the cached-input price,
and a cache hit on its answer saves what a repeat would cost, counted low."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from cache_service.backends.upstream import HttpUpstream
from cache_service.protocols import AuthScheme, Upstream, UpstreamResponse
from cache_service.settings import Settings
from tests.conftest import harness
from tests.fakes import FakeClock, HashingEmbedder

# USD per million tokens: prompt-cache reads a tenth of input, writes a quarter more.
PRICES = {"cachey": {"input": 10, "output": 20, "cached_input": 1, "cache_write": 12.5}}

# (path, request body, the usage the upstream reports, dollars charged, dollars a hit saves)
CASES = [
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {
            "prompt_tokens": 1000,
            "completion_tokens": 100,
            "total_tokens": 1100,
            "prompt_tokens_details": {"cached_tokens": 800},
        },
        # 200 at $10 + 800 at $1 + 100 out at $20
        (2000 + 800 + 2000) / 1e6,
        (2000 + 800 + 2000) / 1e6,
    ),
    (
        "/v1/responses",
        {"input": "What is the capital of France?"},
        {
            "input_tokens": 1000,
            "output_tokens": 100,
            "total_tokens": 1100,
            "input_tokens_details": {"cached_tokens": 800, "cache_write_tokens": 100},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        # 100 at $10 + 800 at $1 + 100 written at $12.50 + 100 out at $20
        (1000 + 800 + 1250 + 2000) / 1e6,
        # a repeat reads the 900 cached or written at $1: the low count
        (1000 + 900 + 2000) / 1e6,
    ),
    (
        "/v1/messages",
        {"max_tokens": 200, "messages": [{"role": "user", "content": "Capital of France?"}]},
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 800,
            "cache_creation_input_tokens": 100,
            "output_tokens": 100,
        },
        (1000 + 800 + 1250 + 2000) / 1e6,
        (1000 + 900 + 2000) / 1e6,
    ),
]


class _PromptCached:
    """The simulator, with its answers' usage replaced by one reporting prompt caching."""

    def __init__(self, inner: HttpUpstream, usage: dict[str, Any]) -> None:
        self.inner = inner
        self.usage = usage

    async def send(
        self, path: str, body: dict[str, Any], headers: dict[str, str], auth: AuthScheme
    ) -> UpstreamResponse:
        up = await self.inner.send(path, body, headers, auth)
        answer = up.json()
        answer["usage"] = self.usage
        kept = {k: v for k, v in up.headers.items() if k.lower() != "content-length"}
        return UpstreamResponse(up.status, kept, json.dumps(answer).encode())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize(("path", "body", "usage", "spent", "saved"), CASES)
async def test_cached_prompt_tokens_are_charged_and_saved_at_the_cached_price(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    path: str,
    body: dict[str, Any],
    usage: dict[str, Any],
    spent: float,
    saved: float,
) -> None:
    settings = settings_factory(
        prices=PRICES, projects=[{"name": "default", "daily_budget_usd": 100}]
    )

    def wrap(inner: HttpUpstream) -> Upstream:
        return _PromptCached(inner, usage)

    async with harness(settings, embedder, clock, wrap=wrap) as h:
        miss = await h.client.post(path, json={"model": "cachey", **body})
        assert miss.status_code == 200, miss.text
        assert miss.headers["x-cache"] == "MISS"
        hit = await h.client.post(path, json={"model": "cachey", **body})
        assert hit.headers["x-cache"] == "HIT"
        quota = (await h.client.get("/v1/quota")).json()
        project = next(
            s for s in quota["scopes"] if (s["kind"], s["name"]) == ("project", "default")
        )
        assert project["daily_budget"]["used"] == pytest.approx(spent)
        total = (await h.client.get("/v1/cache/stats")).json()["total"]
        assert total["dollars_spent"] == pytest.approx(spent)
        assert total["dollars_saved"] == pytest.approx(saved)
        assert total["prompt_tokens_saved"] == 1000  # every prompt token, whatever its price
