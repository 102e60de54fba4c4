"""The whole request path in-process: real FAISS, real diskcache on tmp_path, the real
request path and routes, the simulated upstream over ASGI; only the embedder is a fake."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
from starlette.types import Message

from cache_service import app as app_module
from cache_service.backends.entry_journal import EntryJournal
from cache_service.cache.write_behind import WriteBehind, journal_dir
from cache_service.settings import Settings
from tests.conftest import Harness, harness, http_scope, journalled, lifespan, served
from tests.fakes import FakeClock, HashingEmbedder

Q = "How do I reset my password?"
PARAPHRASE = "how do I reset my password"  # same words: the hashing embedder scores 1.0


@pytest.fixture
async def h(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> AsyncIterator[Harness]:
    async with harness(settings_factory(backoff_base_s=0.001), embedder, clock) as h:
        yield h


def sse_events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def content_of_stream(text: str) -> str:
    parts = []
    for e in sse_events(text):
        if isinstance(e, dict):
            for c in e.get("choices", []):
                parts.append(c["delta"].get("content") or "")
    return "".join(parts)


async def test_miss_then_exact_then_semantic_hit(h: Harness) -> None:
    miss = await h.chat(Q)
    assert miss.status_code == 200
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["x-cache-stored"] == "true"

    exact = await h.chat(Q)
    assert exact.headers["x-cache"] == "HIT"
    assert exact.headers["x-cache-match"] == "exact"
    assert exact.json() == miss.json()

    semantic = await h.chat(PARAPHRASE)
    assert semantic.headers["x-cache"] == "HIT"
    assert semantic.headers["x-cache-match"] == "semantic"
    assert float(semantic.headers["x-cache-similarity"]) > 0.99
    assert semantic.headers["x-cache-entry"] == exact.headers["x-cache-entry"]
    assert semantic.headers["age"] == "0"
    assert semantic.json()["choices"] == miss.json()["choices"]
    assert await h.upstream_calls() == 1


async def test_scope_separates_model_system_params_tenant_and_turns(h: Harness) -> None:
    await h.chat(Q)
    variants: list[dict[str, Any]] = [
        {"model": "gpt-4o"},
        {"temperature": 1.5},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"response_format": {"type": "json_object"}},
        {"headers": {"X-Cache-Namespace": "tenant-b"}},
        {"headers": {"Authorization": "Bearer sk-other"}},
    ]
    for extra in variants:
        r = await h.chat(Q, **extra)
        assert r.headers["x-cache"] == "MISS", extra
    with_system = await h.client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": Q},
            ],
        },
    )
    assert with_system.headers["x-cache"] == "MISS"
    with_history = await h.client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "user", "content": "I use the mobile app."},
                {"role": "assistant", "content": "OK."},
                {"role": "user", "content": Q},
            ],
        },
    )
    assert with_history.headers["x-cache"] == "MISS"
    assert await h.upstream_calls() == 1 + len(variants) + 2


async def test_tenants_never_share_answers(h: Harness) -> None:
    a = await h.chat(Q, headers={"X-Cache-Namespace": "a"})
    b = await h.chat(Q, headers={"X-Cache-Namespace": "b"})
    assert (a.headers["x-cache"], b.headers["x-cache"]) == ("MISS", "MISS")
    assert (await h.chat(Q, headers={"X-Cache-Namespace": "a"})).headers["x-cache"] == "HIT"
    # X-Project-Id is the tenant when no namespace is given.
    p = await h.chat(Q, headers={"X-Project-Id": "a"})
    assert p.headers["x-cache"] == "HIT"


async def test_cache_control_no_cache_refreshes_and_no_store_skips(h: Harness) -> None:
    first = await h.chat(Q)
    refreshed = await h.chat(Q, headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "REFRESH"
    assert refreshed.headers["cache-status"] == "llm-cache; fwd=request; fwd-status=200; stored"
    again = await h.chat(Q)
    assert again.headers["x-cache"] == "HIT"
    assert again.headers["x-cache-entry"] != first.headers.get("x-cache-entry")

    nostore = await h.chat("a question nobody asked", headers={"Cache-Control": "no-store"})
    assert nostore.headers["x-cache"] == "BYPASS"
    assert nostore.headers["cache-status"] == "llm-cache; fwd=bypass; fwd-status=200"
    after = await h.chat("a question nobody asked")
    assert after.headers["x-cache"] == "MISS"
    assert await h.upstream_calls() == 4


async def test_max_age_serves_only_entries_young_enough(h: Harness, clock: FakeClock) -> None:
    first = await h.chat(Q)
    assert first.headers["cache-status"] == "llm-cache; fwd=uri-miss; fwd-status=200; stored"
    clock.advance(100)
    young = await h.chat(Q, headers={"Cache-Control": "max-age=300"})
    assert young.headers["x-cache"] == "HIT"
    assert young.headers["cache-status"] == "llm-cache; hit; detail=exact"
    stale = await h.chat(Q, headers={"Cache-Control": "s-maxage=50, max-age=300"})
    assert stale.headers["x-cache"] == "MISS"  # s-maxage wins: 100 s is too old
    assert stale.headers["x-cache-stored"] == "true"  # and the fresh answer replaces it
    zero = await h.chat(Q, headers={"Cache-Control": "max-age=0"})
    assert zero.headers["x-cache"] == "REFRESH"
    assert await h.upstream_calls() == 3
    bad = await h.chat(Q, headers={"Cache-Control": "max-age=soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Cache-Control"


async def test_litellm_cache_field_is_honoured_and_never_forwarded(h: Harness) -> None:
    first = await h.chat("what is a cache?", cache={"namespace": "team-a", "ttl": 60})
    assert first.headers["x-cache"] == "MISS"
    sent = (await h.sim.get("/_sim/stats")).json()["last_request"]
    assert "cache" not in sent
    # The namespace it named is the partition: the same question under it hits...
    again = await h.chat("what is a cache?", headers={"X-Cache-Namespace": "team-a"})
    assert again.headers["x-cache"] == "HIT"
    # ...and not outside it.
    assert (await h.chat("what is a cache?")).headers["x-cache"] == "MISS"
    fresh = await h.chat("what is a cache?", cache={"namespace": "team-a", "no-cache": True})
    assert fresh.headers["x-cache"] == "REFRESH"
    skipped = await h.chat("never kept", cache={"no-store": True})
    assert skipped.headers["x-cache"] == "BYPASS"
    assert (await h.chat("never kept")).headers["x-cache"] == "MISS"
    for bad in ({"no-cache": "yes"}, {"ttl": -1}, {"colour": "red"}, "no-cache"):
        r = await h.chat("x", cache=bad)
        assert r.status_code == 400, bad
        assert r.json()["error"]["param"].startswith("cache")


async def test_ttl_header_expires_entry(h: Harness, clock: FakeClock) -> None:
    await h.chat(Q, headers={"X-Cache-TTL": "10"})
    clock.advance(9)
    assert (await h.chat(Q)).headers["x-cache"] == "HIT"
    clock.advance(2)
    assert (await h.chat(Q)).headers["x-cache"] == "MISS"
    assert (await h.chat(PARAPHRASE)).headers["x-cache"] == "HIT"  # the fresh entry


async def test_bad_ttl_is_a_clear_400(h: Harness) -> None:
    r = await h.chat(Q, headers={"X-Cache-TTL": "soon"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "X-Cache-TTL"


@pytest.mark.parametrize("fault", ["500", "503", "429"])
async def test_upstream_errors_are_relayed_and_never_cached(h: Harness, fault: str) -> None:
    # one call and three retries, all failing: the last error is relayed as it came
    await h.faults(fault, fault, fault, fault, retry_after=0)
    r = await h.chat(Q)
    assert await h.upstream_calls() == 4
    assert r.status_code == int(fault)
    assert "error" in r.json()
    assert r.headers["x-cache-stored"] == "false"
    if fault == "429":
        assert "retry-after" in r.headers
    ok = await h.chat(Q)
    assert ok.status_code == 200
    assert ok.headers["x-cache"] == "MISS"
    stats = (await h.client.get("/v1/cache/stats")).json()["total"]
    assert stats["errors"] == 1


async def test_unstorable_answers(h: Harness) -> None:
    n2 = await h.chat(Q, n=2)
    assert n2.headers["x-cache"] == "BYPASS"
    truncated = await h.chat("tell me a long story", max_tokens=3)
    assert truncated.json()["choices"][0]["finish_reason"] == "length"
    assert truncated.headers["x-cache-stored"] == "false"
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    called = await h.chat("weather?", tools=tools, tool_choice="required")
    assert called.json()["choices"][0]["message"]["tool_calls"]
    assert called.headers["x-cache-stored"] == "false"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"", 400, "empty"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (json.dumps({"model": "m", "messages": []}).encode(), 400, "messages"),
        (json.dumps({"model": "m", "messages": [{"role": "wizard"}]}).encode(), 400, "role"),
        (json.dumps({"model": 5, "messages": [{"role": "user"}]}).encode(), 400, "model"),
        (
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}),
            400,
            "n",
        ),
    ],
)
async def test_bad_input_gets_openai_style_error(
    h: Harness, body: bytes | str, status: int, needle: str
) -> None:
    r = await h.client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert needle in err["message"]
    assert await h.upstream_calls() == 0


async def test_oversized_body_is_413(
    settings_factory: Callable[..., Settings], embedder: HashingEmbedder, clock: FakeClock
) -> None:
    async with harness(settings_factory(max_body_bytes=2048), embedder, clock) as h:
        r = await h.chat("x" * 5000)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
        assert await h.upstream_calls() == 0


async def test_threshold_header_cannot_go_below_floor(h: Harness) -> None:
    r = await h.chat(Q, headers={"X-Cache-Threshold": "0.1"})
    assert r.status_code == 400
    assert "floor" in r.json()["error"]["message"]
    await h.chat(Q)
    strict = await h.chat(PARAPHRASE, headers={"X-Cache-Threshold": "1.0"})
    assert strict.headers["x-cache"] in ("HIT", "MISS")  # 1.0 is allowed, just strict


async def test_streaming_miss_then_streaming_hit(h: Harness) -> None:
    plain = await h.chat("what is a token bucket?")
    miss = await h.chat(Q, stream=True)
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["content-type"].startswith("text/event-stream")
    events = sse_events(miss.text)
    assert events[-1] == "[DONE]"
    # usage was requested upstream for accounting, but the caller did not ask for it
    assert all(e.get("choices") for e in events if isinstance(e, dict))
    streamed = content_of_stream(miss.text)

    hit = await h.chat(Q, stream=True, stream_options={"include_usage": True})
    assert hit.headers["x-cache"] == "HIT"
    assert content_of_stream(hit.text) == streamed
    hit_events = sse_events(hit.text)
    assert hit_events[-1] == "[DONE]"
    assert hit_events[-2]["usage"]["completion_tokens"] > 0

    as_json = await h.chat(PARAPHRASE)
    assert as_json.headers["x-cache"] == "HIT"
    assert as_json.json()["choices"][0]["message"]["content"] == streamed
    assert plain.headers["x-cache"] == "MISS"


async def test_a_finished_stream_is_already_in_the_cache(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow store must hold the end of the stream, not race the caller's next request.
    cache = h.state["front"].cache
    put = cache.put

    def slow_put(entry: Any) -> Any:
        time.sleep(0.3)
        return put(entry)

    monkeypatch.setattr(cache, "put", slow_put)
    miss = await h.chat(Q, stream=True)
    assert miss.headers["x-cache"] == "MISS"
    again = await h.chat(Q)
    assert again.headers["x-cache"] == "HIT"
    assert await h.upstream_calls() == 1


async def test_dropped_stream_is_not_stored(h: Harness) -> None:
    await h.faults("drop")
    broken = await h.chat(Q, stream=True)
    assert "[DONE]" not in broken.text
    after = await h.chat(Q)
    assert after.headers["x-cache"] == "MISS"


async def test_identical_concurrent_misses_make_one_upstream_call(h: Harness) -> None:
    await h.sim.post("/_sim/config", json={"latency_ms": 200})
    responses = await asyncio.gather(*(h.chat(Q) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1
    assert sum(r.headers.get("x-cache-coalesced") == "true" for r in responses) == 19
    assert await h.upstream_calls() == 1


async def test_unreachable_upstream_is_502(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cache_service.app import create_app
    from cache_service.backends.upstream import HttpUpstream

    upstream = HttpUpstream("http://127.0.0.1:9/v1", timeout_s=2, connect_timeout_s=1)
    app = create_app(settings_factory(), embedder=embedder, upstream=upstream, clock=clock)
    async with (
        lifespan(app) as state,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=served(app, state)), base_url="http://s"
        ) as c,
    ):
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_unavailable"
        assert r.headers["x-cache"] == "MISS"
        # The cause is logged beside the request id, for the operator.
        (failed,) = [rec for rec in caplog.records if rec.getMessage() == "request failed"]
        assert failed.__dict__["request_id"] == r.headers["x-request-id"]
        assert failed.__dict__["code"] == "upstream_unavailable" and failed.__dict__["error"]


async def test_lookup_store_and_invalidate_api(h: Harness) -> None:
    miss = await h.client.post("/v1/cache/lookup", json={"model": "m", "prompt": Q})
    assert miss.json()["hit"] is False
    stored = await h.client.post(
        "/v1/cache/store",
        json={"model": "m", "prompt": Q, "response": {"text": "Use the reset link."}, "ttl": 60},
    )
    assert stored.status_code == 201
    entry_id = stored.json()["entry_id"]
    hit = await h.client.post("/v1/cache/lookup", json={"model": "m", "prompt": PARAPHRASE})
    body = hit.json()
    assert body["hit"] is True
    assert body["match"] == "semantic"
    assert body["entry_id"] == entry_id
    assert body["response"] == {"text": "Use the reset link."}
    other_ns = await h.client.post(
        "/v1/cache/lookup", json={"model": "m", "prompt": Q, "namespace": "other"}
    )
    assert other_ns.json()["hit"] is False
    # the proxy never serves what the lookup API stored
    assert (await h.chat(Q)).headers["x-cache"] == "MISS"

    low = await h.client.post(
        "/v1/cache/lookup", json={"model": "m", "prompt": Q, "threshold": 0.01}
    )
    assert low.status_code == 400
    both = await h.client.post(
        "/v1/cache/lookup", json={"model": "m", "prompt": Q, "messages": [{"role": "user"}]}
    )
    assert both.status_code == 400

    exact = await h.client.post("/v1/cache/lookup", json={"model": "m", "prompt": Q})
    assert exact.json()["match"] == "exact"  # now also held in memory
    deleted = await h.client.delete(f"/v1/cache/entries/{entry_id}")
    assert deleted.json()["deleted"] == 1
    assert (await h.client.delete(f"/v1/cache/entries/{entry_id}")).status_code == 404
    gone = await h.client.post("/v1/cache/lookup", json={"model": "m", "prompt": Q})
    assert gone.json()["hit"] is False


async def test_invalidate_by_namespace_and_model(h: Harness) -> None:
    await h.chat(Q, headers={"X-Cache-Namespace": "a"})
    await h.chat(Q, headers={"X-Cache-Namespace": "b"})
    # Hits first: the latest exact hits are kept in memory, and must go with the entries.
    assert (await h.chat(Q, headers={"X-Cache-Namespace": "a"})).headers["x-cache"] == "HIT"
    assert (await h.client.delete("/v1/cache")).status_code == 400
    r = await h.client.delete("/v1/cache", params={"namespace": "a"})
    assert r.json()["deleted"] == 1
    assert (await h.chat(Q, headers={"X-Cache-Namespace": "a"})).headers["x-cache"] == "MISS"
    assert (await h.chat(Q, headers={"X-Cache-Namespace": "b"})).headers["x-cache"] == "HIT"
    r = await h.client.delete("/v1/cache", params={"model": "gpt-4o-mini"})
    assert r.json()["deleted"] == 2
    assert (await h.chat(Q, headers={"X-Cache-Namespace": "b"})).headers["x-cache"] == "MISS"


async def test_stats_count_outcomes_tokens_and_dollars(h: Harness) -> None:
    miss = await h.chat(Q)
    await h.chat(Q)
    await h.chat(PARAPHRASE)
    await h.chat(Q, headers={"Cache-Control": "no-store"})
    usage = miss.json()["usage"]
    stats = (await h.client.get("/v1/cache/stats")).json()
    t = stats["total"]
    assert (t["requests"], t["exact_hits"], t["semantic_hits"], t["misses"], t["bypasses"]) == (
        4,
        1,
        1,
        1,
        1,
    )
    assert t["hit_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert t["prompt_tokens_saved"] == 2 * usage["prompt_tokens"]
    assert t["completion_tokens_saved"] == 2 * usage["completion_tokens"]
    # gpt-4o-mini: $0.15 / $0.60 per million tokens
    expected = 2 * (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1e6
    assert t["dollars_saved"] == pytest.approx(expected, rel=1e-3)
    assert stats["by_model"]["gpt-4o-mini"]["requests"] == 4
    assert "anonymous" in stats["by_namespace"]


async def test_anthropic_messages_are_cached(h: Harness) -> None:
    body = {
        "model": "claude-3-5-haiku",
        "max_tokens": 200,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": Q}],
    }
    first = await h.client.post("/v1/messages", json=body)
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "MISS"
    second = await h.client.post("/v1/messages", json=body)
    assert second.headers["x-cache"] == "HIT"
    assert second.json()["content"] == first.json()["content"]
    other_system = await h.client.post("/v1/messages", json={**body, "system": "Be verbose."})
    assert other_system.headers["x-cache"] == "MISS"
    missing = await h.client.post("/v1/messages", json={"model": "c", "messages": []})
    assert missing.status_code == 400


async def test_health_and_readiness(h: Harness) -> None:
    assert (await h.client.get("/healthz")).json() == {"status": "ok"}
    ready = await h.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["index_ready"] is True


async def test_huge_prompt_is_matched_exactly_only(h: Harness) -> None:
    head = "Summarise this contract. " * 40  # past semantic_max_chars
    long_a = head + "word " * 200_000 + "The party of the first part is Acme."
    long_b = head + "word " * 200_000 + "The party of the first part is Initech."
    first = await h.chat(long_a)
    assert first.status_code == 200
    assert first.headers["x-cache-stored"] == "true"
    assert (await h.chat(long_a)).headers["x-cache-match"] == "exact"
    # Same opening, different ending: an embedding of the first 256 word pieces would call
    # these identical; they must not share an answer.
    assert (await h.chat(long_b)).headers["x-cache"] == "MISS"


async def test_identical_concurrent_streams_make_one_upstream_call(h: Harness) -> None:
    await h.sim.post("/_sim/config", json={"latency_ms": 200, "stream_chunk_delay_ms": 5})
    plain = [h.chat(Q, stream=True) for _ in range(9)]
    with_usage = h.chat(Q, stream=True, stream_options={"include_usage": True})
    responses = await asyncio.gather(*plain, with_usage)
    assert await h.upstream_calls() == 1
    texts = {content_of_stream(r.text) for r in responses}
    assert len(texts) == 1 and texts.pop()
    assert sum(r.headers.get("x-cache-coalesced") == "true" for r in responses) == 9
    assert all(sse_events(r.text)[-1] == "[DONE]" for r in responses)
    usage_chunks = [
        [e for e in sse_events(r.text) if isinstance(e, dict) and e.get("usage")] for r in responses
    ]
    assert [len(u) for u in usage_chunks] == [0] * 9 + [1]
    # stored once the stream ended cleanly
    assert (await h.chat(Q)).headers["x-cache"] == "HIT"


async def test_other_api_paths_are_relayed_upstream(h: Harness) -> None:
    models = await h.client.get("/v1/models")
    assert models.status_code == 200
    assert models.headers["x-cache"] == "BYPASS"
    assert models.headers["content-type"].startswith("application/json")
    assert any(m["id"] == "gpt-4o-mini" for m in models.json()["data"])
    missing = await h.client.post("/v1/no-such-endpoint", json={"x": 1})
    assert missing.status_code == 404  # the upstream's answer, relayed
    assert "error" in missing.json()
    # the sidecar's own routes still win over the relay
    assert (await h.client.get("/v1/cache/stats")).status_code == 200
    assert (await h.client.get("/v1/cache/report", params={"format": "json"})).status_code == 200


def anthropic_text(stream_text: str) -> tuple[str, list[str]]:
    names, text = [], []
    for block in stream_text.split("\n\n"):
        lines = block.split("\n")
        name = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = next((ln[6:] for ln in lines if ln.startswith("data: ")), None)
        if name is None or data is None:
            continue
        names.append(name)
        event = json.loads(data)
        if event["type"] == "content_block_delta":
            text.append(event["delta"]["text"])
    return "".join(text), names


async def test_anthropic_streams_are_cached_and_replayed(h: Harness) -> None:
    body = {
        "model": "claude-3-5-haiku",
        "max_tokens": 300,
        "messages": [{"role": "user", "content": Q}],
        "stream": True,
    }
    miss = await h.client.post("/v1/messages", json=body)
    assert miss.headers["x-cache"] == "MISS"
    text, names = anthropic_text(miss.text)
    assert names[0] == "message_start" and names[-1] == "message_stop"
    hit = await h.client.post("/v1/messages", json=body)
    assert hit.headers["x-cache"] == "HIT"
    hit_text, hit_names = anthropic_text(hit.text)
    assert hit_text == text and text
    assert hit_names[0] == "message_start" and hit_names[-1] == "message_stop"
    plain = await h.client.post("/v1/messages", json={**body, "stream": False})
    assert plain.headers["x-cache"] == "HIT"
    assert plain.json()["content"][0]["text"] == text
    assert await h.upstream_calls() == 1
    # an OpenAI request with the same words never sees the Anthropic entry
    assert (await h.chat(Q)).headers["x-cache"] == "MISS"


async def test_every_answer_has_a_request_id(h: Harness) -> None:
    bad = await h.client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert len(bad.headers["x-request-id"]) == 32
    assert (await h.client.get("/v1/no-such-thing")).headers["x-request-id"]
    mine = await h.chat(Q, headers={"X-Request-Id": "app-trace.42"})
    assert mine.headers["x-request-id"] == "app-trace.42"
    forged = await h.chat(Q, headers={"X-Request-Id": 'x" injected=1 ' + "a" * 200})
    assert forged.headers["x-request-id"] != 'x" injected=1 ' + "a" * 200
    assert len(forged.headers["x-request-id"]) == 32


class StalledEmbedder(HashingEmbedder):
    """Hangs until released, like a model thread stuck behind a backlog."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str]) -> Any:
        self.release.wait(10)
        return super().embed(texts)


async def test_an_embedding_past_its_deadline_fails_open(
    settings_factory: Callable[..., Settings], clock: FakeClock
) -> None:
    embedder = StalledEmbedder()
    settings = settings_factory(embed_timeout_ms=50, backoff_base_s=0.001)
    try:
        async with harness(settings, embedder, clock) as h:
            r = await h.chat(Q)
            assert r.status_code == 200
            assert r.headers["x-cache"] == "MISS"
            # stored for exact matches: no vector could be made in time
            assert r.headers["x-cache-stored"] == "true"
            again = await h.chat(Q)  # the exact key is checked before any embedding
            assert again.headers["x-cache"] == "HIT"
            assert again.headers["x-cache-match"] == "exact"
            stats = (await h.client.get("/v1/cache/stats")).json()["total"]
            assert stats["embed_timeouts"] == 1
            assert stats["misses"] == 1
            assert await h.upstream_calls() == 1
            embedder.release.set()
    finally:
        embedder.release.set()


async def test_a_miss_is_answered_before_its_entry_is_stored_and_hits_meanwhile(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer waits for the entry's journal record, not for the store: while the store
    is held, the answer has left, the record is on disk, and the same request hits."""
    front = h.state["front"]
    store = front.cache.store
    put = store.put
    release = threading.Event()

    def slow_put(entry: Any) -> Any:
        assert release.wait(10), "the store was never released"
        return put(entry)

    monkeypatch.setattr(store, "put", slow_put)
    journal = journal_dir(h.state["settings"].data_dir)
    answer = await asyncio.wait_for(h.chat(Q), 5)
    assert answer.headers["x-cache"] == "MISS" and answer.headers["x-cache-stored"] == "true"
    assert len(store) == 0  # not stored yet ...
    assert journalled(journal) == [Q]  # ... but journalled
    again = await h.chat(Q)
    assert again.headers["x-cache"] == "HIT" and again.headers["x-cache-match"] == "exact"
    assert await h.upstream_calls() == 1
    release.set()
    await front.settle()
    assert len(store) == 1
    assert journalled(journal) == []  # stored, so its record is gone


async def test_an_answer_confirmed_as_stored_is_served_after_a_crash(
    settings_factory: Callable[..., Settings],
    embedder: HashingEmbedder,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process that dies with entries journalled but not stored (here: its writer never
    ran, and it stopped without storing them) serves them after its restart."""
    settings = settings_factory(backoff_base_s=0.001)
    with monkeypatch.context() as crashed:
        crashed.setattr(WriteBehind, "_start", lambda self: None)
        crashed.setattr(WriteBehind, "close", lambda self: self._journal.close())
        async with harness(settings, embedder, clock) as h:
            assert (await h.chat(Q)).headers["x-cache-stored"] == "true"
            assert len(h.state["front"].cache.store) == 0
    async with harness(settings, embedder, clock) as h:
        assert len(h.state["front"].cache.store) == 1  # replayed before the index was built
        assert (await h.chat(Q)).headers["x-cache"] == "HIT"
        assert (await h.chat(PARAPHRASE)).headers["x-cache-match"] == "semantic"
        assert await h.upstream_calls() == 0  # this life's upstream was never called
    assert EntryJournal(journal_dir(settings.data_dir)).segments() == []


async def test_an_answer_is_recorded_right_after_its_last_byte(h: Harness) -> None:
    """Stats and the outcome log wait until the answer has gone (nothing the caller waits
    for), yet nothing runs between the two: the count is there as soon as the call ends."""
    stats = h.state["stats"]

    def requests() -> int:
        return int(stats.snapshot()["total"]["requests"])

    async def call(content: str) -> tuple[str, int, int]:
        body = json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
        ).encode()
        json_type = (b"content-type", b"application/json")
        scope = http_scope("POST", "/v1/chat/completions", [json_type, (b"host", b"s")])
        received = False
        seen: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            nonlocal received
            if received:
                await asyncio.Event().wait()  # no disconnect while the answer is made
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["cache"] = dict(message["headers"]).get(b"x-cache", b"").decode()
            elif not message.get("more_body"):
                seen["at_last_byte"] = requests()

        await served(h.app, h.state)(scope, receive, send)
        return seen["cache"], seen["at_last_byte"], requests()

    before = requests()
    assert await call(Q) == ("MISS", before, before + 1)
    assert await call(Q) == ("HIT", before + 1, before + 2)


class CountWatchingEmbedder(HashingEmbedder):
    """Once watching, holds each embedding until a token count has been made (2 s at most),
    and notes whether one was: a count made only after the embedding is never seen."""

    def __init__(self) -> None:
        super().__init__()
        self.watching = False
        self.counted = threading.Event()
        self.seen: list[bool] = []

    def embed(self, texts: Sequence[str]) -> Any:
        if self.watching:
            self.seen.append(self.counted.wait(2))
            self.counted.clear()
        return super().embed(texts)


async def test_a_miss_counts_its_prompt_while_it_is_embedded_and_only_once(
    settings_factory: Callable[..., Settings], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A miss's quota estimate needs its prompt's tokens: counted while the model embeds the
    # prompt (this thread would only wait), not after it, on the miss's own time.
    embedder = CountWatchingEmbedder()
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        embedder.counted.set()
        return len(text.split())

    monkeypatch.setattr(app_module, "_token_counter", lambda: count)
    # A deadline past the embedder's hold: a lookup that timed out would count at admission
    # while the model still held, and look like a count made beside it.
    settings = settings_factory(embed_timeout_ms=10_000, backoff_base_s=0.001)
    async with harness(settings, embedder, clock) as h:
        embedder.watching = True
        miss = await h.chat(Q)
        assert miss.headers["x-cache"] == "MISS"
        assert embedder.seen == [True]
        assert len(counted) == 1 and Q in counted[0]  # the admission took that count
        exact = await h.chat(Q)
        assert exact.headers["x-cache-match"] == "exact"
        assert len(counted) == 1  # answered before any embedding or count
