"""POST /v1/embeddings is cached exactly: the same input to the same model (and encoding,
dimensions) in the same tenant is answered from the cache; anything else goes upstream."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Harness


async def embed(h: Harness, headers: dict[str, str] | None = None, **body: Any) -> Any:
    body.setdefault("model", "text-embedding-3-small")
    return await h.client.post("/v1/embeddings", json=body, headers=headers)


async def test_an_identical_embeddings_request_is_a_hit(h: Harness) -> None:
    first = await embed(h, input=["chunk one", "chunk two"])
    assert first.status_code == 200
    assert first.headers["x-cache"] == "MISS" and first.headers["x-cache-stored"] == "true"
    again = await embed(h, input=["chunk one", "chunk two"], user="someone-else")
    assert again.headers["x-cache"] == "HIT"
    assert again.headers["cache-status"] == "llm-cache; hit; detail=exact"
    assert again.json() == first.json()
    assert await h.upstream_calls() == 1
    stats = (await h.client.get("/v1/cache/stats")).json()["by_model"]
    row = stats["text-embedding-3-small"]
    assert (row["exact_hits"], row["misses"], row["prompt_tokens_saved"]) == (1, 1, 4)
    assert row["dollars_saved"] > 0


@pytest.mark.parametrize(
    "change",
    [
        {"input": ["chunk one"]},
        {"input": ["chunk two", "chunk one"]},  # order is part of the answer
        {"model": "text-embedding-3-large"},
        {"dimensions": 4},
        {"encoding_format": "base64"},
    ],
)
async def test_anything_that_changes_the_vectors_misses(h: Harness, change: dict[str, Any]) -> None:
    await embed(h, input=["chunk one", "chunk two"])
    body: dict[str, Any] = {"input": ["chunk one", "chunk two"], **change}
    assert (await embed(h, **body)).headers["x-cache"] == "MISS"


async def test_tenants_do_not_share_embeddings(h: Harness) -> None:
    await embed(h, {"Authorization": "Bearer sk-a"}, input="secret chunk")
    other = await embed(h, {"Authorization": "Bearer sk-b"}, input="secret chunk")
    assert other.headers["x-cache"] == "MISS"


async def test_controls_errors_and_non_embedding_bodies(h: Harness) -> None:
    await embed(h, input="x")
    fresh = await embed(h, {"Cache-Control": "no-cache"}, input="x")
    assert fresh.headers["x-cache"] == "REFRESH"
    # The upstream's 400 is relayed and nothing is stored.
    bad = await embed(h, input="y", dimensions=0)
    assert bad.status_code == 400 and bad.headers["x-cache"] == "MISS"
    calls = await h.upstream_calls()
    assert (await embed(h, input="y", dimensions=0)).status_code == 400
    assert await h.upstream_calls() == calls + 1
    # Not an embeddings request: relayed untouched for the upstream to judge.
    odd = await h.client.post("/v1/embeddings", content=b"not json")
    assert odd.status_code == 400 and odd.headers["x-cache"] == "BYPASS"
