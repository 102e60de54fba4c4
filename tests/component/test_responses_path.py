"""OpenAI's Responses API through the real request path (in-process app, simulated upstream
over ASGI, hashing embedder): cached exact and semantic like chat, streams included, under
the same quota control, errors in OpenAI's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from cache_service.settings import Settings
from cache_service.sse import SSEParser
from tests.conftest import Harness, harness
from tests.fakes import FakeClock, HashingEmbedder

Q = "How do I reset my password?"


@pytest.fixture
async def h(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> AsyncIterator[Harness]:
    async with harness(settings_factory(backoff_base_s=0.001), embedder, clock) as h:
        yield h


async def respond(h: Harness, text: str, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", None)
    body = {"model": "gpt-4o-mini", "input": text, **extra}
    return await h.client.post("/v1/responses", json=body, headers=headers)


def events(r: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    return [(n, json.loads(d)) for n, d in SSEParser().feed_events(r.content)]


def streamed_text(r: httpx.Response) -> str:
    return "".join(d["delta"] for n, d in events(r) if n == "response.output_text.delta")


async def in_flight(h: Harness) -> int:
    n: int = (await h.client.get("/v1/quota")).json()["in_flight"]
    return n


async def test_miss_then_exact_then_semantic_hit(h: Harness) -> None:
    miss = await respond(h, Q)
    assert miss.status_code == 200, miss.text
    assert (miss.headers["x-cache"], miss.headers["x-cache-stored"]) == ("MISS", "true")
    body = miss.json()
    assert body["object"] == "response" and body["usage"]["input_tokens"] > 0

    exact = await respond(h, Q)
    assert (exact.headers["x-cache"], exact.headers["x-cache-match"]) == ("HIT", "exact")
    assert exact.json() == body

    paraphrase = await respond(h, "how do I reset my password")  # same words, other bytes
    assert (paraphrase.headers["x-cache"], paraphrase.headers["x-cache-match"]) == (
        "HIT",
        "semantic",
    )
    assert paraphrase.json() == body
    assert await h.upstream_calls() == 1

    stats = (await h.client.get("/v1/cache/stats")).json()["total"]
    assert (stats["misses"], stats["exact_hits"], stats["semantic_hits"]) == (1, 1, 1)
    assert stats["upstream_prompt_tokens"] == body["usage"]["input_tokens"]
    assert stats["completion_tokens_saved"] == 2 * body["usage"]["output_tokens"]


async def test_streamed_miss_is_stored_and_replayed(h: Harness) -> None:
    miss = await respond(h, Q, stream=True)
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["content-type"].startswith("text/event-stream")
    text = streamed_text(miss)
    assert text and events(miss)[-1][0] == "response.completed"

    hit = await respond(h, Q, stream=True)
    assert hit.headers["x-cache"] == "HIT"
    assert streamed_text(hit) == text
    final = events(hit)[-1][1]["response"]
    assert final["usage"] == events(miss)[-1][1]["response"]["usage"]

    plain = await respond(h, Q)
    assert plain.headers["x-cache"] == "HIT"
    assert plain.json()["output"][0]["content"][0]["text"] == text
    assert await h.upstream_calls() == 1
    assert await in_flight(h) == 0


async def test_a_dropped_stream_is_not_stored_and_holds_nothing(h: Harness) -> None:
    await h.faults("drop")
    broken = await respond(h, Q, stream=True)
    assert "response.completed" not in [n for n, _ in events(broken)]
    again = await respond(h, Q)
    assert again.headers["x-cache"] == "MISS"
    assert await in_flight(h) == 0


async def test_truncated_answers_are_relayed_but_not_stored(h: Harness) -> None:
    r = await respond(h, Q, max_output_tokens=16)
    assert r.json()["status"] == "incomplete"
    assert r.headers["x-cache-stored"] == "false"
    assert (await respond(h, Q, max_output_tokens=16)).headers["x-cache"] == "MISS"


async def test_upstream_errors_are_relayed_in_openai_shape_and_never_cached(h: Harness) -> None:
    await h.faults("500", "500", "500", "500", retry_after=0)
    r = await respond(h, Q)
    assert r.status_code == 500
    assert "error" in r.json()
    assert r.headers["x-cache-stored"] == "false"
    assert (await respond(h, Q)).headers["x-cache"] == "MISS"
    assert await in_flight(h) == 0


async def test_bad_requests_are_openai_shaped(h: Harness) -> None:
    r = await h.client.post("/v1/responses", json={"model": "gpt-4o-mini"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", "input")
    assert "x-request-id" in r.headers


async def test_the_same_quota_control_as_chat(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    settings = settings_factory(projects=[{"name": "default", "rpm": 2}], on_limit="reject")
    async with harness(settings, embedder, clock) as h:
        codes = [(await respond(h, f"distinct question {i}")).status_code for i in range(3)]
        assert codes == [200, 200, 429]
        refused = await respond(h, "another distinct question")
        err = refused.json()["error"]
        assert (err["type"], err["code"]) == ("rate_limit_error", "project_rpm_exceeded")
        assert refused.headers["x-cache"] == "MISS"
        assert refused.headers["x-ratelimit-limit-requests"] == "2"
        assert int(refused.headers["retry-after"]) >= 1
        # A chat request counts against the same window.
        assert (await h.chat("yet another question")).status_code == 429
        # Hits take no quota.
        assert (await respond(h, "distinct question 0")).headers["x-cache"] == "HIT"
