"""The simulator's `POST /v1/responses` (OpenAI's Responses API), read raw and through the
official openai SDK over ASGI. Raw bodies and events are also validated strictly against the
SDK's own pydantic models, since the SDK itself parses leniently."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from cache_service.simulator.answers import count_tokens
from cache_service.simulator.app import create_simulated_app
from cache_service.simulator.state import SimConfig
from tests.unit.test_simulated import assert_openai_error, named_events, server_url

__all__ = ["server_url"]  # the real-server fixture, for the SDK over real HTTP

RESPONSES = "/v1/responses"
CHAT = "/v1/chat/completions"
QUESTION = "What is the capital of France?"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
        },
        "required": ["city", "unit"],
    },
}
TIME_TOOL: dict[str, Any] = {"type": "function", "name": "get_time", "parameters": {}}
# The documented order of a one-message stream; runs of deltas collapse to one entry.
ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
EVENT = TypeAdapter[Any](ResponseStreamEvent)


def body_of(prompt: Any = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": prompt, **extra}


@dataclass
class Sim:
    raw: httpx.AsyncClient
    sdk: openai.AsyncOpenAI

    async def create(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        r = await self.raw.post(RESPONSES, json=body, **kw)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        SdkResponse.model_validate(data)
        return data

    async def stream(self, body: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
        r = await self.raw.post(RESPONSES, json={**body, "stream": True}, **kw)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "[DONE]" not in r.text
        events = [data for _, data in named_events(r.text)]
        for event in events:
            EVENT.validate_python(event)
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        return events

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self.raw.get("/_sim/stats")).json()
        return stats


def sim_for(config: SimConfig | None = None, max_retries: int = 0) -> tuple[Sim, httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_simulated_app(config))
    raw = httpx.AsyncClient(transport=transport, base_url="http://sim")
    http = httpx.AsyncClient(transport=transport, base_url="http://sim/v1")
    sdk = openai.AsyncOpenAI(
        base_url="http://sim/v1",
        api_key="x",
        # The SDK takes an httpx client as well as an httpx2 one; its annotation names httpx2.
        http_client=http,  # type: ignore[arg-type]
        max_retries=max_retries,
    )
    return Sim(raw, sdk), http


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    s, http = sim_for()
    async with s.raw, http, s.sdk:
        yield s


def text_of(data: dict[str, Any]) -> str:
    [item] = data["output"]
    [part] = item["content"]
    assert part["type"] == "output_text"
    text: str = part["text"]
    return text


def dedupe(names: list[str]) -> list[str]:
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def deltas(events: list[dict[str, Any]], kind: str = "response.output_text.delta") -> str:
    return "".join(e["delta"] for e in events if e["type"] == kind)


# --- the response object ---------------------------------------------------------------------


async def test_sdk_parses_a_plain_response(sim: Sim) -> None:
    response = await sim.sdk.responses.create(
        model="gpt-4o-mini",
        input=QUESTION,
        instructions="Be brief.",
        metadata={"run": "7"},
        temperature=0.2,
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.error is None
    assert response.incomplete_details is None
    assert response.instructions == "Be brief."
    assert response.metadata == {"run": "7"}
    assert response.temperature == 0.2
    assert response.top_p == 1.0
    assert response.tool_choice == "auto"
    assert response.tools == []
    assert response.parallel_tool_calls is True
    [item] = response.output
    assert item.type == "message"
    assert item.id.startswith("msg_")
    assert item.status == "completed"
    assert item.role == "assistant"
    assert f'to: "{QUESTION}"' in response.output_text
    usage = response.usage
    assert usage is not None
    assert usage.output_tokens == count_tokens(response.output_text)
    assert usage.input_tokens == count_tokens("Be brief.") + count_tokens(QUESTION) + 2 * 4
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


async def test_wire_json_has_the_api_fields_and_no_output_text(sim: Sim) -> None:
    r = await sim.raw.post(RESPONSES, json=body_of())
    assert r.headers["x-request-id"].startswith("req_")
    data = r.json()
    assert "output_text" not in data
    assert data["object"] == "response"
    assert data["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert data["truncation"] == "disabled"
    assert data["store"] is True
    assert data["completed_at"] >= data["created_at"]
    assert data["output"][0]["content"][0]["annotations"] == []
    SdkResponse.model_validate(data)


async def test_answer_is_the_chat_answer_for_the_same_conversation(sim: Sim) -> None:
    plain = text_of(await sim.create(body_of(instructions="Be brief.")))
    chat_body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": QUESTION},
        ],
    }
    chat = (await sim.raw.post(CHAT, json=chat_body)).json()
    assert chat["choices"][0]["message"]["content"] == plain

    # Content parts map onto chat's text parts.
    parts = [{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]
    chat_parts = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    listed = text_of(await sim.create(body_of(parts)))
    chat = (await sim.raw.post(CHAT, json={**chat_body, "messages": chat_parts})).json()
    assert chat["choices"][0]["message"]["content"] == listed


async def test_same_request_same_answer_and_any_change_changes_it(sim: Sim) -> None:
    base = text_of(await sim.create(body_of()))
    again = await sim.create(body_of())
    assert text_of(again) == base
    other, http = sim_for()
    async with other.raw, http, other.sdk:
        assert text_of(await other.create(body_of())) == base
    variants = [
        body_of("What is the capital of Spain?"),
        {**body_of(), "model": "gpt-4.1"},
        body_of(instructions="Be brief."),
        body_of(
            [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
        ),
    ]
    texts = {text_of(await sim.create(v)) for v in variants}
    seeded, http = sim_for(SimConfig(seed="other"))
    async with seeded.raw, http, seeded.sdk:
        texts.add(text_of(await seeded.create(body_of())))
    assert base not in texts
    assert len(texts) == len(variants) + 1


async def test_multi_turn_input_items_are_accepted(sim: Sim) -> None:
    first = await sim.create(body_of())
    call = {"type": "function_call", "call_id": "call_1", "name": "get_time", "arguments": "{}"}
    history = [
        {"role": "user", "content": QUESTION},
        first["output"][0],  # the previous output message, passed back as is
        call,
        {"type": "function_call_output", "call_id": "call_1", "output": "noon"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And?"}]},
    ]
    data = await sim.create(
        body_of(history, previous_response_id=first["id"], store=False, user="u1")
    )
    assert 'to: "And?"' in text_of(data)
    assert data["previous_response_id"] == first["id"]
    assert data["store"] is False
    assert data["user"] == "u1"
    assert text_of(await sim.create(body_of(history))) == text_of(data)


async def test_max_output_tokens_truncates_and_marks_incomplete(sim: Sim) -> None:
    full = text_of(await sim.create(body_of()))
    cut = await sim.create(body_of(max_output_tokens=16))
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["completed_at"] is None
    assert cut["output"][0]["status"] == "incomplete"
    assert cut["usage"]["output_tokens"] == 16
    assert cut["max_output_tokens"] == 16
    assert full.startswith(text_of(cut))
    assert text_of(cut) != full

    roomy = await sim.create(body_of(max_output_tokens=1000))
    assert roomy["status"] == "completed"
    assert text_of(roomy) == full

    response = await sim.sdk.responses.create(
        model="gpt-4o-mini", input=QUESTION, max_output_tokens=16
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == text_of(cut)


# --- tools and formats -----------------------------------------------------------------------


async def test_required_and_named_tool_choice_return_a_function_call(sim: Sim) -> None:
    body = body_of(tools=[WEATHER_TOOL], tool_choice="required")
    data = await sim.create(body)
    [call] = data["output"]
    assert call["type"] == "function_call"
    assert call["id"].startswith("fc_")
    assert call["call_id"].startswith("call_")
    assert call["status"] == "completed"
    assert call["name"] == "get_weather"
    arguments = json.loads(call["arguments"])
    assert isinstance(arguments["city"], str)
    assert arguments["unit"] in ("c", "f")
    assert data["usage"]["output_tokens"] == count_tokens("get_weather") + count_tokens(
        call["arguments"]
    )
    assert data["tools"] == [{"description": None, "strict": True, **WEATHER_TOOL}]
    assert (await sim.create(body))["output"][0]["arguments"] == call["arguments"]

    named = body_of(
        tools=[WEATHER_TOOL, TIME_TOOL], tool_choice={"type": "function", "name": "get_time"}
    )
    response = await sim.sdk.responses.create(**named)
    [item] = response.output
    assert item.type == "function_call"
    assert (item.name, item.arguments) == ("get_time", "{}")
    assert response.tool_choice.type == "function"

    auto = await sim.create(body_of(tools=[WEATHER_TOOL]))
    assert auto["output"][0]["type"] == "message"


async def test_json_formats(sim: Sim) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
    }
    fmt = {"type": "json_schema", "name": "answer", "schema": schema}
    data = await sim.create(body_of(text={"format": fmt}))
    value = json.loads(text_of(data))
    assert set(value) == {"city", "n"}
    assert isinstance(value["n"], int)
    assert data["text"]["format"]["name"] == "answer"

    data = await sim.create(body_of("Answer in JSON.", text={"format": {"type": "json_object"}}))
    assert 'to: "Answer in JSON."' in json.loads(text_of(data))["answer"]
    r = await sim.raw.post(RESPONSES, json=body_of(text={"format": {"type": "json_object"}}))
    assert assert_openai_error(r, 400, "invalid_request_error")["param"] == "input"


# --- streaming -------------------------------------------------------------------------------


async def test_stream_events_in_order_assemble_to_the_plain_response(sim: Sim) -> None:
    plain = await sim.create(body_of())
    events = await sim.stream(body_of())
    assert dedupe([e["type"] for e in events]) == ORDER
    assert sum(e["type"] == "response.output_text.delta" for e in events) > 3

    created, in_progress = events[0]["response"], events[1]["response"]
    assert created == in_progress
    assert created["status"] == "in_progress"
    assert created["output"] == []
    assert created["usage"] is None

    item_id = events[2]["item"]["id"]
    assert events[2]["item"] == {
        "id": item_id,
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    assert events[3]["part"] == {
        "type": "output_text",
        "annotations": [],
        "logprobs": [],
        "text": "",
    }
    for event in events[3:-2]:
        assert (event["item_id"], event["output_index"], event["content_index"]) == (item_id, 0, 0)
    text = deltas(events)
    assert text == text_of(plain)
    assert all(e["logprobs"] == [] for e in events if "delta" in e)
    done = {e["type"]: e for e in events}
    assert done["response.output_text.done"]["text"] == text
    assert done["response.content_part.done"]["part"]["text"] == text
    assert done["response.output_item.done"]["item"]["status"] == "completed"

    final = events[-1]["response"]
    assert final["id"] == created["id"]
    assert final["status"] == "completed"
    assert final["output"] == [done["response.output_item.done"]["item"]]
    assert final["usage"] == plain["usage"]
    assert (await sim.stats())["streams"] == 1


async def test_sdk_parses_the_stream(sim: Sim) -> None:
    plain = await sim.sdk.responses.create(model="gpt-4o-mini", input=QUESTION)
    stream = await sim.sdk.responses.create(model="gpt-4o-mini", input=QUESTION, stream=True)
    types: list[str] = []
    pieces: list[str] = []
    completed = None
    async with stream:
        async for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                pieces.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
    assert dedupe(types) == ORDER
    assert "".join(pieces) == plain.output_text
    assert completed is not None
    assert completed.output_text == plain.output_text
    assert completed.usage == plain.usage


async def test_stream_truncated_ends_incomplete(sim: Sim) -> None:
    plain = await sim.create(body_of(max_output_tokens=16))
    events = await sim.stream(body_of(max_output_tokens=16))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"
    assert deltas(events) == text_of(plain)
    assert count_tokens(deltas(events)) == 16


async def test_stream_of_a_function_call(sim: Sim) -> None:
    body = body_of(tools=[WEATHER_TOOL], tool_choice="required")
    call = (await sim.create(body))["output"][0]
    events = await sim.stream(body)
    assert dedupe([e["type"] for e in events]) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[2]["item"]["arguments"] == ""
    assert events[2]["item"]["status"] == "in_progress"
    arguments = deltas(events, "response.function_call_arguments.delta")
    assert arguments == call["arguments"]
    assert events[-3]["arguments"] == arguments
    assert events[-2]["item"]["call_id"] == call["call_id"]


async def test_obfuscation_is_on_by_default_and_can_be_turned_off(sim: Sim) -> None:
    events = await sim.stream(body_of())
    assert all(e["obfuscation"] for e in events if e["type"].endswith(".delta"))
    off = {"include_obfuscation": False}
    events = await sim.stream(body_of(stream_options=off))
    assert not any("obfuscation" in e for e in events)


async def test_stream_chunk_delay_paces_the_stream() -> None:
    s, http = sim_for(SimConfig(stream_chunk_delay_ms=20))
    async with s.raw, http, s.sdk:
        start = time.monotonic()
        events = await s.stream(body_of("hi"))
        assert time.monotonic() - start >= 0.02 * (len(events) - 1) * 0.9


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "hi"}, "model", "missing_required_parameter"),
        ({"model": 4, "input": "hi"}, "model", "invalid_type"),
        ({"model": "gpt-4o-mini"}, "input", "missing_required_parameter"),
        (body_of(5), "input", "invalid_type"),
        (body_of([]), "input", "empty_array"),
        (body_of(["hi"]), "input[0]", "invalid_type"),
        (body_of([{"content": "hi"}]), "input[0].role", "missing_required_parameter"),
        (body_of([{"role": "tool", "content": "hi"}]), "input[0].role", "invalid_value"),
        (body_of([{"role": "user"}]), "input[0].content", "missing_required_parameter"),
        (
            body_of([{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]),
            "input[0].content[0].type",
            "invalid_value",
        ),
        (
            body_of([{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]),
            "input[0].content[0].type",
            "invalid_value",
        ),
        (body_of([{"type": "reasoning", "summary": []}]), "input[0].type", "invalid_value"),
        (
            body_of([{"type": "function_call_output", "output": "x"}]),
            "input[0].call_id",
            "missing_required_parameter",
        ),
        (body_of(instructions=["x"]), "instructions", "invalid_type"),
        (body_of(max_output_tokens=15), "max_output_tokens", "integer_below_min_value"),
        (body_of(max_output_tokens="many"), "max_output_tokens", "invalid_type"),
        (body_of(temperature=2.5), "temperature", "decimal_above_max_value"),
        (body_of(top_p=-0.1), "top_p", "decimal_below_min_value"),
        (body_of(stream="yes"), "stream", "invalid_type"),
        (body_of(stream_options={"include_obfuscation": False}), "stream_options", None),
        (
            body_of(stream=True, stream_options={"include_obfuscation": 1}),
            "stream_options.include_obfuscation",
            "invalid_type",
        ),
        (body_of(tools={}), "tools", "invalid_type"),
        (
            body_of(tools=[{"type": "function", "function": {"name": "get_weather"}}]),
            "tools[0].name",
            "missing_required_parameter",
        ),
        (body_of(tool_choice="required"), "tool_choice", None),
        (
            body_of(tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "nope"}),
            "tool_choice",
            None,
        ),
        (body_of(text={"format": {"type": "yaml"}}), "text.format.type", "invalid_value"),
        (
            body_of(text={"format": {"type": "json_schema", "name": "x"}}),
            "text.format.schema",
            "missing_required_parameter",
        ),
        (body_of(metadata={"k": 1}), "metadata.k", "invalid_type"),
        (
            body_of(metadata={f"k{i}": "v" for i in range(17)}),
            "metadata",
            "object_above_max_properties",
        ),
        (body_of(truncation="sometimes"), "truncation", "invalid_value"),
        (body_of(parallel_tool_calls="yes"), "parallel_tool_calls", "invalid_type"),
        (body_of(previous_response_id=1), "previous_response_id", "invalid_type"),
    ],
)
async def test_invalid_bodies_get_400_naming_the_param(
    sim: Sim, body: dict[str, Any], param: str, code: str | None
) -> None:
    r = await sim.raw.post(RESPONSES, json=body)
    error = assert_openai_error(r, 400, "invalid_request_error")
    assert (error["param"], error["code"]) == (param, code)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]"])
async def test_malformed_json_gets_400(sim: Sim, raw: bytes) -> None:
    r = await sim.raw.post(RESPONSES, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(r, 400, "invalid_request_error")


async def test_sdk_raises_bad_request_with_the_param(sim: Sim) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sim.sdk.responses.create(model="gpt-4o-mini", input=QUESTION, max_output_tokens=5)
    assert caught.value.param == "max_output_tokens"
    assert caught.value.code == "integer_below_min_value"


# --- faults and stats ------------------------------------------------------------------------


async def test_429_with_retry_after_then_the_sdk_retries() -> None:
    s, http = sim_for(max_retries=1)
    async with s.raw, http, s.sdk:
        await s.raw.post("/_sim/faults", json={"faults": ["429"], "retry_after": 0.05})
        response = await s.sdk.responses.create(model="gpt-4o-mini", input=QUESTION)
        assert response.status == "completed"
        stats = await s.stats()
        assert stats["requests"] == 2
        assert stats["faults_served"] == 1
        assert stats["by_path"] == {RESPONSES: 2}

        r = await s.raw.post(RESPONSES, json=body_of(), headers={"X-Sim-Fault": "429:2"})
        error = assert_openai_error(r, 429, "rate_limit_error")
        assert error["code"] == "rate_limit_exceeded"
        assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("2", "2000")


async def test_sdk_raises_rate_limit_error_without_retries(sim: Sim) -> None:
    await sim.raw.post("/_sim/faults", json={"faults": ["429:3"]})
    with pytest.raises(openai.RateLimitError) as caught:
        await sim.sdk.responses.create(model="gpt-4o-mini", input=QUESTION)
    assert caught.value.response.headers["retry-after"] == "3"


async def test_queued_faults_apply_to_streams_and_plain_requests(sim: Sim) -> None:
    await sim.raw.post("/_sim/faults", json={"faults": ["500", "ok", "503", "drop"]})
    streamed = body_of(stream=True)
    assert_openai_error(await sim.raw.post(RESPONSES, json=streamed), 500, "server_error")
    await sim.create(body_of())
    assert_openai_error(await sim.raw.post(RESPONSES, json=body_of()), 503, "server_error")
    # drop on a non-streamed request is a 500
    assert_openai_error(await sim.raw.post(RESPONSES, json=body_of()), 500, "server_error")
    stats = await sim.stats()
    assert (stats["faults_served"], stats["queued_faults"]) == (3, 0)


@pytest.mark.parametrize("tools", [False, True])
async def test_drop_fault_cuts_a_stream_short(sim: Sim, tools: bool) -> None:
    extra = {"tools": [WEATHER_TOOL], "tool_choice": "required"} if tools else {}
    full = await sim.create(body_of(**extra))
    events = await sim.stream(body_of(**extra), headers={"X-Sim-Fault": "drop"})
    types = {e["type"] for e in events}
    assert "response.created" in types
    assert not any(t.endswith(".done") or t == "response.completed" for t in types)
    kind = "response.function_call_arguments.delta" if tools else "response.output_text.delta"
    partial = deltas(events, kind)
    expected = full["output"][0]["arguments"] if tools else text_of(full)
    assert partial
    assert expected.startswith(partial)
    assert partial != expected


async def test_stats_count_responses_like_chat(sim: Sim) -> None:
    await sim.create(body_of(), headers={"Authorization": "Bearer sk-one"})
    await sim.stream(body_of())
    await sim.raw.post(RESPONSES, content=b"junk")
    await sim.raw.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    stats = await sim.stats()
    assert stats["requests"] == 4
    assert stats["by_path"] == {RESPONSES: 3, CHAT: 1}
    assert stats["streams"] == 1
    await sim.create(body_of("last one"), headers={"Authorization": "Bearer sk-two"})
    stats = await sim.stats()
    assert stats["last_request"] == body_of("last one")
    assert stats["last_authorization"] == "Bearer sk-two"


async def test_latency_applies(sim: Sim) -> None:
    await sim.raw.post("/_sim/config", json={"latency_ms": 100})
    start = time.monotonic()
    await sim.create(body_of())
    assert time.monotonic() - start >= 0.1 - 0.01


# --- the real server, driven by the official SDK ---------------------------------------------


def test_official_sdk_against_the_real_server(server_url: str) -> None:
    with openai.OpenAI(base_url=f"{server_url}/v1", api_key="x", max_retries=0) as sdk:
        response = sdk.responses.create(model="gpt-4o-mini", input=QUESTION, instructions="Hi.")
        assert response.status == "completed"
        pieces: list[str] = []
        final = None
        with sdk.responses.create(
            model="gpt-4o-mini", input=QUESTION, instructions="Hi.", stream=True
        ) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    pieces.append(event.delta)
                elif event.type == "response.completed":
                    final = event.response
        assert "".join(pieces) == response.output_text
        assert final is not None
        assert final.usage == response.usage
