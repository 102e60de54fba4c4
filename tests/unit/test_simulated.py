from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest

from cache_service.simulator.answers import count_tokens
from cache_service.simulator.app import create_simulated_app
from cache_service.simulator.state import SimConfig
from tests.threaded_server import serving
from tests.unit.test_sse_anthropic import ORDER as ANTHROPIC_ORDER
from tests.unit.test_sse_anthropic import dedupe

CHAT = "/v1/chat/completions"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer"},
                "hourly": {"type": "boolean"},
            },
            "required": ["city"],
        },
    },
}
# asyncio may fire a timer up to its clock resolution early, so sleep-based bounds get a hair
# of slack rather than being exact.
SLACK_S = 0.01
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {}}}


def chat(prompt: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **extra}


def client_for(config: SimConfig | None = None) -> httpx.AsyncClient:
    app = create_simulated_app(config)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for() as c:
        yield c


async def answer(client: httpx.AsyncClient, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = await client.post(CHAT, json=body, **kw)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def content_of(data: dict[str, Any], index: int = 0) -> str:
    text: str = data["choices"][index]["message"]["content"]
    return text


def sse_events(text: str) -> list[Any]:
    assert text.endswith("\n\n")
    events: list[Any] = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_openai_error(r: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind
    assert error["message"]
    return error


# --- answers ---------------------------------------------------------------------------------


async def test_response_has_the_openai_shape(client: httpx.AsyncClient) -> None:
    data = await answer(client, chat())
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "gpt-4o-mini"
    assert data["system_fingerprint"].startswith("fp_")
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    assert 'to: "What is the capital of France?"' in choice["message"]["content"]


async def test_same_request_same_answer_across_instances(client: httpx.AsyncClient) -> None:
    first = await answer(client, chat())
    second = await answer(client, chat())
    async with client_for() as other:
        third = await answer(other, chat())
    assert content_of(first) == content_of(second) == content_of(third)
    assert first["id"] != second["id"]


async def test_any_change_changes_the_answer(client: httpx.AsyncClient) -> None:
    base = content_of(await answer(client, chat()))
    variants = [
        chat("What is the capital of Spain?"),
        {**chat(), "model": "gpt-4o"},
        {
            **chat(),
            "messages": [{"role": "system", "content": "Be brief."}, *chat()["messages"]],
        },
    ]
    contents = {content_of(await answer(client, body)) for body in variants}
    async with client_for(SimConfig(seed="other")) as seeded:
        contents.add(content_of(await answer(seeded, chat())))
    assert base not in contents
    assert len(contents) == len(variants) + 1


async def test_any_model_name_is_accepted(client: httpx.AsyncClient) -> None:
    data = await answer(client, {**chat(), "model": "my-private-finetune"})
    assert data["model"] == "my-private-finetune"


async def test_usage_is_positive_and_consistent(client: httpx.AsyncClient) -> None:
    short = await answer(client, chat("hi"))
    long = await answer(client, chat("hi " * 50))
    for data in (short, long):
        usage = data["usage"]
        assert usage["prompt_tokens"] > 0
        assert usage["completion_tokens"] == count_tokens(content_of(data))
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert short["usage"]["prompt_tokens"] == count_tokens("hi") + 4
    assert long["usage"]["prompt_tokens"] == 50 + 4


async def test_answer_lengths_vary_within_a_realistic_range(client: httpx.AsyncClient) -> None:
    lengths = {
        (await answer(client, chat(f"question {i}")))["usage"]["completion_tokens"]
        for i in range(30)
    }
    assert min(lengths) >= 20
    assert max(lengths) <= 125
    assert len(lengths) > 5


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_truncates_with_finish_reason_length(
    client: httpx.AsyncClient, key: str
) -> None:
    full = content_of(await answer(client, chat()))
    data = await answer(client, {**chat(), key: 7})
    [choice] = data["choices"]
    assert choice["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 7
    assert full.startswith(choice["message"]["content"])

    roomy = await answer(client, {**chat(), key: 1000})
    assert roomy["choices"][0]["finish_reason"] == "stop"
    assert content_of(roomy) == full


async def test_n_gives_distinct_deterministic_choices(client: httpx.AsyncClient) -> None:
    single = await answer(client, chat())
    data = await answer(client, chat(n=3))
    again = await answer(client, chat(n=3))
    contents = [content_of(data, i) for i in range(3)]
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert len(set(contents)) == 3
    assert contents == [content_of(again, i) for i in range(3)]
    assert contents[0] == content_of(single)
    assert data["usage"]["completion_tokens"] == sum(count_tokens(c) for c in contents)


async def test_required_tool_choice_returns_a_tool_call(client: httpx.AsyncClient) -> None:
    body = chat(tools=[WEATHER_TOOL], tool_choice="required")
    data = await answer(client, body)
    [choice] = data["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    args = json.loads(call["function"]["arguments"])
    assert isinstance(args["city"], str)
    assert args["unit"] in ("c", "f")
    assert isinstance(args["days"], int)
    assert isinstance(args["hourly"], bool)
    assert (await answer(client, body))["choices"][0]["message"]["tool_calls"] == [call]


async def test_named_tool_choice_and_auto(client: httpx.AsyncClient) -> None:
    named = chat(
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    [call] = (await answer(client, named))["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_time", "arguments": "{}"}

    auto = await answer(client, chat(tools=[WEATHER_TOOL], tool_choice="auto"))
    assert auto["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in auto["choices"][0]["message"]

    missing = {**named, "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    r = await client.post(CHAT, json=missing)
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == "tool_choice"


# --- streaming -------------------------------------------------------------------------------


async def test_stream_assembles_to_the_non_streamed_answer(client: httpx.AsyncClient) -> None:
    expected = await answer(client, chat())
    r = await client.post(CHAT, json=chat(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "refusal": None,
    }
    usage_chunk, final = chunks[-1], chunks[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == expected["usage"]
    assert final["choices"][0]["delta"] == {}
    assert final["choices"][0]["finish_reason"] == "stop"
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(content) > 3
    assert "".join(content) == content_of(expected)


async def test_stream_without_include_usage_has_no_usage_chunk(
    client: httpx.AsyncClient,
) -> None:
    events = sse_events((await client.post(CHAT, json=chat(stream=True))).text)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] and "usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_stream_honours_max_tokens_and_tool_calls(client: httpx.AsyncClient) -> None:
    events = sse_events((await client.post(CHAT, json=chat(stream=True, max_tokens=5))).text)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert count_tokens(text) == 5
    assert events[-2]["choices"][0]["finish_reason"] == "length"

    body = chat(tools=[WEATHER_TOOL], tool_choice="required")
    expected = (await answer(client, body))["choices"][0]["message"]["tool_calls"][0]
    events = sse_events((await client.post(CHAT, json={**body, "stream": True})).text)
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0]["tool_calls"][0]["id"] == expected["id"]
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[:-1])
    assert arguments == expected["function"]["arguments"]
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_chunk_delay_paces_the_stream() -> None:
    async with client_for(SimConfig(stream_chunk_delay_ms=20)) as c:
        start = time.monotonic()
        events = sse_events((await c.post(CHAT, json=chat("hi", stream=True))).text)
        assert time.monotonic() - start >= 0.02 * (len(events) - 1) * 0.9


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        ({"model": "gpt-4o-mini", "messages": "hi"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": ["hi"]}, "messages[0]"),
        ({"model": "gpt-4o-mini", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": 4, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({**chat(), "max_tokens": 0}, "max_tokens"),
        ({**chat(), "n": 0}, "n"),
        ({**chat(), "stream_options": {"include_usage": True}}, "stream_options"),
        ({**chat(), "tool_choice": "required"}, "tool_choice"),
    ],
)
async def test_invalid_bodies_get_400(
    client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    r = await client.post(CHAT, json=body)
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == param


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]"])
async def test_malformed_json_gets_400(client: httpx.AsyncClient, raw: bytes) -> None:
    r = await client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(r, 400, "invalid_request_error")


async def test_assistant_tool_call_turn_without_content_is_valid(
    client: httpx.AsyncClient,
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    await answer(client, {"model": "gpt-4o-mini", "messages": messages})


async def test_unknown_route_uses_the_openai_error_shape(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nope"), 404, "invalid_request_error")
    r = await client.get(CHAT)
    assert_openai_error(r, 405, "invalid_request_error")
    assert "POST" in r.headers["allow"]


# --- faults ----------------------------------------------------------------------------------


async def test_queued_faults_are_served_in_order(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/_sim/faults", json={"faults": ["429", "ok", 500, "503"], "retry_after": 2}
    )
    assert r.json() == {"queued_faults": 4}

    limited = await client.post(CHAT, json=chat())
    error = assert_openai_error(limited, 429, "rate_limit_error")
    assert error["code"] == "rate_limit_exceeded"
    assert limited.headers["retry-after"] == "2"
    assert limited.headers["retry-after-ms"] == "2000"
    await answer(client, chat())
    assert_openai_error(await client.post(CHAT, json=chat()), 500, "server_error")
    assert_openai_error(await client.post(CHAT, json=chat()), 503, "server_error")
    await answer(client, chat())

    stats = (await client.get("/_sim/stats")).json()
    assert stats["faults_served"] == 3
    assert stats["queued_faults"] == 0


async def test_429_retry_after_defaults_to_config_and_accepts_a_suffix() -> None:
    async with client_for(SimConfig(retry_after_s=7)) as c:
        r = await c.post(CHAT, json=chat(), headers={"X-Sim-Fault": "429"})
        assert r.headers["retry-after"] == "7"
        r = await c.post(CHAT, json=chat(), headers={"X-Sim-Fault": "429:0.5"})
        assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("1", "500")


async def test_header_fault_wins_and_leaves_the_queue_alone(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/faults", json={"faults": ["500"]})
    r = await client.post(CHAT, json=chat(), headers={"X-Sim-Fault": "503"})
    assert r.status_code == 503
    assert (await client.get("/_sim/stats")).json()["queued_faults"] == 1
    r = await client.post(CHAT, json=chat(), headers={"X-Sim-Fault": "401"})
    assert_openai_error(r, 401, "invalid_request_error")


async def test_slow_fault_delays_a_normal_answer(client: httpx.AsyncClient) -> None:
    expected = content_of(await answer(client, chat()))
    await client.post("/_sim/faults", json={"faults": ["slow"], "slow_s": 0.2})
    start = time.monotonic()
    data = await answer(client, chat())
    assert time.monotonic() - start >= 0.2 - SLACK_S
    assert content_of(data) == expected
    start = time.monotonic()
    await answer(client, chat(), headers={"X-Sim-Fault": "slow:0.1"})
    assert time.monotonic() - start >= 0.1 - SLACK_S


async def test_timeout_fault_hangs_past_a_client_deadline(client: httpx.AsyncClient) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            client.post(CHAT, json=chat(), headers={"X-Sim-Fault": "timeout"}), 0.2
        )
    await client.post("/_sim/faults", json={"faults": ["timeout"], "timeout_s": 0.1})
    start = time.monotonic()
    await answer(client, chat())
    assert time.monotonic() - start >= 0.1 - SLACK_S


async def test_drop_fault_cuts_a_stream_short(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/faults", json={"faults": ["drop"]})
    r = await client.post(CHAT, json=chat(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events
    assert len(events) >= 2
    assert all(e["choices"][0]["finish_reason"] is None for e in events)
    full = content_of(await answer(client, chat()))
    partial = "".join(e["choices"][0]["delta"]["content"] for e in events)
    assert full.startswith(partial)
    assert partial != full


async def test_drop_fault_on_a_non_streamed_request_is_a_500(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=chat(), headers={"X-Sim-Fault": "drop"})
    assert_openai_error(r, 500, "server_error")


@pytest.mark.parametrize(
    "payload",
    [
        {"faults": ["418"]},
        {"faults": "429"},
        {"faults": ["500:3"]},
        {"faults": ["slow:soon"]},
        {"faults": ["429"], "retry_after": -1},
    ],
)
async def test_bad_fault_requests_are_rejected(
    client: httpx.AsyncClient, payload: dict[str, Any]
) -> None:
    assert_openai_error(
        await client.post("/_sim/faults", json=payload), 400, "invalid_request_error"
    )
    assert (await client.get("/_sim/stats")).json()["queued_faults"] == 0


async def test_unknown_header_fault_is_a_400(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json=chat(), headers={"X-Sim-Fault": "explode"})
    assert_openai_error(r, 400, "invalid_request_error")


# --- control API -----------------------------------------------------------------------------


async def test_stats_count_requests_and_record_authorization(client: httpx.AsyncClient) -> None:
    await answer(client, chat(), headers={"Authorization": "Bearer sk-one"})
    await client.post(CHAT, json=chat(stream=True), headers={"Authorization": "Bearer sk-two"})
    await client.post(CHAT, content=b"junk")
    await client.get("/v1/models", headers={"Authorization": "Bearer sk-three"})
    await client.get("/healthz")
    stats = (await client.get("/_sim/stats")).json()
    assert stats["requests"] == 3
    assert stats["by_path"] == {CHAT: 3, "/v1/models": 1}
    assert stats["streams"] == 1
    assert stats["last_authorization"] == "Bearer sk-three"

    await answer(client, chat("last one"), headers={"Authorization": "Bearer sk-four"})
    stats = (await client.get("/_sim/stats")).json()
    assert stats["last_authorization"] == "Bearer sk-four"
    assert stats["last_request"] == chat("last one")


async def test_reset_clears_counters_queue_and_runtime_config(client: httpx.AsyncClient) -> None:
    await answer(client, chat(), headers={"Authorization": "Bearer x"})
    await client.post("/_sim/faults", json={"faults": ["500", "500"]})
    await client.post("/_sim/config", json={"latency_ms": 5})
    stats = (await client.post("/_sim/reset")).json()
    assert stats["requests"] == 0
    assert stats["by_path"] == {}
    assert stats["faults_served"] == 0
    assert stats["queued_faults"] == 0
    assert stats["last_authorization"] is None
    assert stats["config"]["latency_ms"] == 0
    await answer(client, chat())


async def test_config_changes_latency_at_runtime(client: httpx.AsyncClient) -> None:
    r = await client.post("/_sim/config", json={"latency_ms": 150})
    assert r.json()["config"]["latency_ms"] == 150
    start = time.monotonic()
    await answer(client, chat())
    assert time.monotonic() - start >= 0.15 - SLACK_S
    for bad in ({"latency_ms": -1}, {"latency_ms": "fast"}, {"colour": "red"}):
        r = await client.post("/_sim/config", json=bad)
        assert_openai_error(r, 400, "invalid_request_error")


async def test_apps_do_not_share_state() -> None:
    async with client_for() as a, client_for() as b:
        await a.post("/_sim/faults", json={"faults": ["500"]})
        await answer(b, chat())
        assert (await b.get("/_sim/stats")).json()["queued_faults"] == 0
        assert (await a.post(CHAT, json=chat())).status_code == 500


# --- other endpoints -------------------------------------------------------------------------


async def test_models_and_healthz(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    ids = {m["id"] for m in models["data"]}
    assert {"gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini"} <= ids
    assert any(i.startswith("claude-3-5-haiku") for i in ids)
    assert all(m["object"] == "model" for m in models["data"])
    assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_anthropic_messages(client: httpx.AsyncClient) -> None:
    body: dict[str, Any] = {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 1000,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    r = await client.post("/v1/messages", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["type"] == "message"
    assert data["role"] == "assistant"
    assert data["id"].startswith("msg_")
    assert data["stop_reason"] == "end_turn"
    [block] = data["content"]
    assert block["type"] == "text"
    assert data["usage"]["output_tokens"] == count_tokens(block["text"])
    assert data["usage"]["input_tokens"] > 0
    assert (await client.post("/v1/messages", json=body)).json()["content"] == data["content"]

    # The same conversation through the chat endpoint gets the same answer.
    equivalent = {
        "model": body["model"],
        "messages": [{"role": "system", "content": "Be brief."}, *body["messages"]],
    }
    assert content_of(await answer(client, equivalent)) == block["text"]

    short = (await client.post("/v1/messages", json={**body, "max_tokens": 3})).json()
    assert short["stop_reason"] == "max_tokens"
    assert short["usage"]["output_tokens"] == 3


async def test_anthropic_errors_use_the_anthropic_shape(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/messages", json={"model": "claude-3-5-haiku-latest"})
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = await client.post("/v1/messages", json={"model": "m"}, headers={"X-Sim-Fault": "429"})
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in r.headers


# --- Anthropic streaming ---------------------------------------------------------------------

MESSAGES = "/v1/messages"
ANTHROPIC_BODY: dict[str, Any] = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 1000,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Anthropic's framing, checked strictly: every event is `event: <type>` then one
    `data:` line whose JSON carries the same type."""
    assert text.endswith("\n\n")
    events: list[tuple[str, dict[str, Any]]] = []
    for block in text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: "), block
        assert data_line.startswith("data: "), block
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


def streamed_text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(d["delta"]["text"] for name, d in events if name == "content_block_delta")


async def test_anthropic_stream_matches_the_non_streamed_message(
    client: httpx.AsyncClient,
) -> None:
    whole = (await client.post(MESSAGES, json=ANTHROPIC_BODY)).json()
    r = await client.post(MESSAGES, json={**ANTHROPIC_BODY, "stream": True})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["request-id"].startswith("req_")
    events = named_events(r.text)
    names = [name for name, _ in events]
    assert dedupe(names) == ANTHROPIC_ORDER
    assert names.count("content_block_delta") > 1

    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert {k: start[k] for k in ("type", "role", "model", "content")} == {
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_BODY["model"],
        "content": [],
    }
    assert start["stop_reason"] is None
    assert start["stop_sequence"] is None
    assert start["usage"] == {"input_tokens": whole["usage"]["input_tokens"], "output_tokens": 1}
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [d for name, d in events if name == "content_block_delta"]
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas)
    assert streamed_text(events) == whole["content"][0]["text"]
    assert events[-3][1] == {"type": "content_block_stop", "index": 0}
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": whole["usage"]["output_tokens"]},
    }
    assert events[-1][1] == {"type": "message_stop"}
    assert (await client.get("/_sim/stats")).json()["streams"] == 1


async def test_anthropic_stream_honours_max_tokens(client: httpx.AsyncClient) -> None:
    body = {**ANTHROPIC_BODY, "max_tokens": 3}
    whole = (await client.post(MESSAGES, json=body)).json()
    events = named_events((await client.post(MESSAGES, json={**body, "stream": True})).text)
    assert streamed_text(events) == whole["content"][0]["text"]
    message_delta = next(d for name, d in events if name == "message_delta")
    assert message_delta["delta"]["stop_reason"] == "max_tokens"
    assert message_delta["usage"]["output_tokens"] == 3


async def test_anthropic_stream_false_or_null_is_not_streamed(client: httpx.AsyncClient) -> None:
    for value in (False, None):
        r = await client.post(MESSAGES, json={**ANTHROPIC_BODY, "stream": value})
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["type"] == "message"


async def test_anthropic_stream_must_be_a_boolean(client: httpx.AsyncClient) -> None:
    r = await client.post(MESSAGES, json={**ANTHROPIC_BODY, "stream": "yes"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("via", ["header", "queue"])
async def test_drop_fault_cuts_an_anthropic_stream_short(
    client: httpx.AsyncClient, via: str
) -> None:
    headers = {"X-Sim-Fault": "drop"} if via == "header" else {}
    if via == "queue":
        await client.post("/_sim/faults", json={"faults": ["drop"]})
    r = await client.post(MESSAGES, json={**ANTHROPIC_BODY, "stream": True}, headers=headers)
    assert r.status_code == 200
    events = named_events(r.text)
    names = {name for name, _ in events}
    assert "message_start" in names
    assert not names & {"content_block_stop", "message_delta", "message_stop"}
    full = (await client.post(MESSAGES, json=ANTHROPIC_BODY)).json()["content"][0]["text"]
    partial = streamed_text(events)
    assert partial
    assert full.startswith(partial)
    assert partial != full


async def test_drop_fault_on_a_non_streamed_anthropic_request_is_a_500(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(MESSAGES, json=ANTHROPIC_BODY, headers={"X-Sim-Fault": "drop"})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "api_error"


async def test_other_faults_apply_to_anthropic_streams(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/faults", json={"faults": ["503", "ok"]})
    streamed = {**ANTHROPIC_BODY, "stream": True}
    r = await client.post(MESSAGES, json=streamed)
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "overloaded_error"
    assert (await client.post(MESSAGES, json=streamed)).status_code == 200


async def test_anthropic_stream_chunk_delay_paces_the_stream() -> None:
    async with client_for(SimConfig(stream_chunk_delay_ms=20)) as c:
        start = time.monotonic()
        r = await c.post(MESSAGES, json={**ANTHROPIC_BODY, "stream": True})
        events = named_events(r.text)
        assert time.monotonic() - start >= 0.02 * (len(events) - 1) * 0.9


# --- the real server, driven by the official SDK ---------------------------------------------


@pytest.fixture
def server_url() -> Iterator[str]:
    with serving(create_simulated_app(SimConfig(stream_chunk_delay_ms=1))) as url:
        yield url


def test_official_sdk_against_the_real_server(server_url: str) -> None:
    messages: list[Any] = [{"role": "user", "content": "Explain semantic caching."}]
    with openai.OpenAI(base_url=f"{server_url}/v1", api_key="x", max_retries=0) as sdk:
        completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)
        content = completion.choices[0].message.content
        assert content
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert completion.usage.total_tokens == (
            completion.usage.prompt_tokens + completion.usage.completion_tokens
        )

        stream = sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        finish_reasons: list[str] = []
        usage = None
        with stream:
            for chunk in stream:
                for choice in chunk.choices:
                    pieces.append(choice.delta.content or "")
                    if choice.finish_reason:
                        finish_reasons.append(choice.finish_reason)
                if chunk.usage is not None:
                    usage = chunk.usage
        assert "".join(pieces) == content
        assert finish_reasons == ["stop"]
        assert usage == completion.usage

        assert {m.id for m in sdk.models.list()} >= {"gpt-4o-mini", "gpt-4.1"}

        with httpx.Client(base_url=server_url) as raw:
            stats = raw.get("/_sim/stats").json()
        assert stats["requests"] == 2
        assert stats["last_authorization"] == "Bearer x"
