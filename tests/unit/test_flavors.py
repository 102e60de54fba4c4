"""Each wire format's module, called directly: the canonical view of its requests, where its
usage lives, what it may store, its stream assembled and replayed, its error shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from cache_service.cache.keys import keys_of
from cache_service.flavors import ANTHROPIC, FLAVORS, OPENAI_CHAT, RESPONSES, for_route
from cache_service.flavors.base import Flavor
from cache_service.pricing import NO_USAGE, Price, Usage
from cache_service.sse import SSEParser

RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1_795_000_000,
    "status": "completed",
    "model": "gpt-4o-mini",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "Open Settings, then Security, then Reset password.",
                    "annotations": [],
                }
            ],
        }
    ],
    "usage": {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 21,
    },
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "temperature": 1.0,
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
}


def keys(flavor: Flavor, body: dict[str, Any]) -> Any:
    r = flavor.canonical(body)
    return keys_of(
        tenant="t",
        api=flavor.name,
        model=r.model,
        system=r.system,
        messages=r.messages,
        params=r.params,
    )


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(name, json.loads(data)) for name, data in SSEParser().feed_events(raw)]


# ------------------------------------------------------------------ the registry


def test_every_flavour_has_its_own_route_name_and_upstream_path() -> None:
    assert len({f.route for f in FLAVORS}) == len({f.name for f in FLAVORS}) == len(FLAVORS)
    assert for_route("/v1/responses") is RESPONSES
    assert for_route("/v1/messages") is ANTHROPIC
    assert for_route("/v1/{path:path}") is OPENAI_CHAT  # relayed calls: OpenAI's shape
    assert (OPENAI_CHAT.auth, ANTHROPIC.auth, RESPONSES.auth) == ("bearer", "x-api-key", "bearer")


# ------------------------------------------------------------------ canonical views


def test_chat_canonical_view() -> None:
    r = OPENAI_CHAT.canonical(
        {
            "model": "m",
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
            "max_completion_tokens": 50,
            "temperature": 0.2,
            "user": "someone",
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 2,
        }
    )
    assert (r.model, r.system, r.completion_cap, r.stream, r.choices) == ("m", None, 50, True, 2)
    assert r.stream_usage is True
    assert r.params == {"max_completion_tokens": 50, "temperature": 0.2}  # `user` answers alike


def test_anthropic_system_is_top_level() -> None:
    r = ANTHROPIC.canonical(
        {
            "model": "c",
            "system": "be brief",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": "q"}],
        }
    )
    assert (r.system, r.completion_cap, r.stream) == ("be brief", 9, False)


def test_a_stream_flag_that_is_not_true_is_not_a_stream() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": "false"}
    assert OPENAI_CHAT.canonical(body).stream is False


def test_responses_input_string_is_one_user_turn_and_instructions_the_system() -> None:
    r = RESPONSES.canonical(
        {"model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 64}
    )
    assert r.messages == [{"role": "user", "content": "hi"}]
    assert (r.system, r.completion_cap) == ("be brief", 64)
    assert r.params == {"max_output_tokens": 64}


def test_responses_input_items_keep_roles_and_other_items_stay_whole() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "sunny"}
    question = {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]}
    body = {"model": "m", "input": [question, call, output]}
    r = RESPONSES.canonical(body)
    assert r.messages == [
        {"role": "user", "content": question["content"]},
        {"role": "function_call", "content": call},
        {"role": "function_call_output", "content": output},
    ]
    # Ends with a tool result, not a user turn: matched exactly only.
    assert keys(RESPONSES, body).semantic_ok is False


def test_responses_prompt_text_is_the_last_user_turn() -> None:
    k = keys(
        RESPONSES,
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "reset my password"}]}
            ],
        },
    )
    assert (k.prompt, k.semantic_ok) == ("reset my password", True)


@pytest.mark.parametrize(
    "change",
    [
        {"instructions": "talk like a pirate"},
        {"previous_response_id": "resp_other"},
        {"max_output_tokens": 16},
        {"text": {"format": {"type": "json_object"}}},
        {"model": "gpt-4o"},
    ],
)
def test_responses_fields_that_change_the_answer_change_the_scope(change: dict[str, Any]) -> None:
    base = {"model": "gpt-4o-mini", "input": "which plan has priority support?"}
    assert keys(RESPONSES, base).scope != keys(RESPONSES, {**base, **change}).scope


def test_responses_fields_that_do_not_change_the_answer_keep_the_scope() -> None:
    base = {"model": "gpt-4o-mini", "input": "which plan has priority support?"}
    same = {**base, "store": False, "metadata": {"a": "b"}, "user": "u", "stream": True}
    assert keys(RESPONSES, base).exact_key == keys(RESPONSES, same).exact_key


def test_the_same_question_in_two_formats_has_two_scopes() -> None:
    chat = keys(OPENAI_CHAT, {"model": "m", "messages": [{"role": "user", "content": "q"}]})
    resp = keys(RESPONSES, {"model": "m", "input": "q"})
    assert chat.scope != resp.scope


# ------------------------------------------------------------------ usage and storability


def test_usage_lives_where_each_format_puts_it() -> None:
    assert OPENAI_CHAT.usage({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == Usage(3, 4)
    assert ANTHROPIC.usage({"usage": {"input_tokens": 5, "output_tokens": 6}}) == Usage(5, 6)
    assert RESPONSES.usage(RESPONSE) == Usage(12, 9)
    assert RESPONSES.usage({"usage": None}) == NO_USAGE
    assert OPENAI_CHAT.usage({"usage": {"prompt_tokens": True}}) == NO_USAGE


def test_cached_prompt_tokens_are_read_from_each_formats_usage() -> None:
    # OpenAI: cached tokens are part of prompt_tokens, broken out in a details object.
    chat = {
        "usage": {
            "prompt_tokens": 2000,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 0},
        }
    }
    assert OPENAI_CHAT.usage(chat) == Usage(2000, 10, cached=1536)
    responses = {
        "usage": {
            "input_tokens": 3000,
            "output_tokens": 20,
            "input_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 512},
        }
    }
    assert RESPONSES.usage(responses) == Usage(3000, 20, cached=1024, cache_write=512)
    # Anthropic: input_tokens excludes cache reads and writes; the prompt is all three.
    anthropic = {
        "usage": {
            "input_tokens": 50,
            "cache_read_input_tokens": 4000,
            "cache_creation_input_tokens": 300,
            "output_tokens": 7,
        }
    }
    assert ANTHROPIC.usage(anthropic) == Usage(4350, 7, cached=4000, cache_write=300)
    # A details object of the wrong type, or a bool count, is no cache use.
    odd = {"usage": {"prompt_tokens": 9, "prompt_tokens_details": [1], "completion_tokens": 1}}
    assert OPENAI_CHAT.usage(odd) == Usage(9, 1)
    flag = {"usage": {"input_tokens": 9, "cache_read_input_tokens": True, "output_tokens": 1}}
    assert ANTHROPIC.usage(flag) == Usage(9, 1)


def test_cost_of_each_formats_usage_uses_the_cached_prices() -> None:
    price = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    anthropic = ANTHROPIC.usage(
        {
            "usage": {
                "input_tokens": 100_000,
                "cache_read_input_tokens": 800_000,
                "cache_creation_input_tokens": 100_000,
                "output_tokens": 0,
            }
        }
    )
    # 100k at $3 + 800k at $0.30 + 100k at $3.75 (per million)
    assert price.cost(anthropic) == pytest.approx(0.3 + 0.24 + 0.375)
    chat = OPENAI_CHAT.usage(
        {
            "usage": {
                "prompt_tokens": 1_000_000,
                "completion_tokens": 0,
                "prompt_tokens_details": {"cached_tokens": 500_000},
            }
        }
    )
    assert price.cost(chat) == pytest.approx(1.5 + 0.15)
    responses = RESPONSES.usage(
        {
            "usage": {
                "input_tokens": 1_000_000,
                "output_tokens": 0,
                "input_tokens_details": {"cached_tokens": 1_000_000},
            }
        }
    )
    assert price.cost(responses) == pytest.approx(0.3)


def test_a_completed_response_may_be_stored() -> None:
    assert RESPONSES.refusal(200, RESPONSE, cache_tool_calls=False) is None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
            "status incomplete",
        ),
        ({"status": "queued"}, "status queued"),
        ({"error": {"code": "server_error", "message": "x"}}, "error body"),
        ({"object": "chat.completion"}, "not a response"),
        ({"output": []}, "empty answer"),
        (
            {
                "output": [
                    {
                        "type": "function_call",
                        "id": "fc",
                        "call_id": "c",
                        "name": "f",
                        "arguments": "{}",
                    }
                ]
            },
            "tool calls",
        ),
        (
            {"output": [{"type": "web_search_call", "id": "ws", "status": "completed"}]},
            "hosted tool call",
        ),
    ],
)
def test_responses_that_are_never_stored(change: dict[str, Any], why: str) -> None:
    assert RESPONSES.refusal(200, {**RESPONSE, **change}, cache_tool_calls=False) == why
    assert RESPONSES.refusal(500, RESPONSE, cache_tool_calls=False) == "status 500"


def test_responses_function_calls_are_stored_when_tool_calls_may_be() -> None:
    call = {"type": "function_call", "id": "fc", "call_id": "c", "name": "f", "arguments": "{}"}
    assert RESPONSES.refusal(200, {**RESPONSE, "output": [call]}, cache_tool_calls=True) is None


# ------------------------------------------------------------------ streams


def test_a_stored_response_replays_as_the_events_the_sdk_parses() -> None:
    raw = b"".join(RESPONSES.replay(RESPONSE, False))
    parsed = events(raw)
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    for name, data in parsed:
        assert name == data["type"]
        adapter.validate_python(data)  # every event is one the openai SDK knows
    kinds = [name for name, _ in parsed]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [d["sequence_number"] for _, d in parsed] == list(range(len(parsed)))
    text = "".join(d["delta"] for n, d in parsed if n == "response.output_text.delta")
    assert text == RESPONSE["output"][0]["content"][0]["text"]
    assert Response.model_validate(parsed[-1][1]["response"]).output_text == text
    assert b"[DONE]" not in raw


def test_a_replayed_response_assembles_back_to_itself() -> None:
    asm = RESPONSES.assembler()
    for _, data in SSEParser().feed_events(b"".join(RESPONSES.replay(RESPONSE, False))):
        asm.add(data)
    assert asm.complete
    assert asm.result() == RESPONSE


def test_a_responses_stream_without_its_completed_event_is_not_complete() -> None:
    asm = RESPONSES.assembler()
    for name, data in SSEParser().feed_events(b"".join(RESPONSES.replay(RESPONSE, False))):
        if name != "response.completed":
            asm.add(data)
    assert not asm.complete
    failed = {"type": "response.failed", "response": {**RESPONSE, "status": "failed"}}
    asm.add(json.dumps(failed))
    assert not asm.complete
    asm = RESPONSES.assembler()
    asm.add(json.dumps({"type": "response.completed", "response": RESPONSE}))
    asm.add(json.dumps({"type": "error", "code": "x", "message": "y", "sequence_number": 9}))
    assert not asm.complete


def test_only_openai_chat_has_a_usage_only_chunk() -> None:
    chunk = {"choices": [], "usage": {"prompt_tokens": 1}}
    assert OPENAI_CHAT.usage_only(chunk)
    assert not OPENAI_CHAT.usage_only({"choices": [{"delta": {}}], "usage": None})
    assert not ANTHROPIC.usage_only(chunk) and not RESPONSES.usage_only(chunk)


def test_chat_streams_ask_for_usage_on_the_callers_behalf() -> None:
    body = {"model": "m", "messages": [], "stream": True, "stream_options": {"x": 1}}
    assert OPENAI_CHAT.stream_body(body)["stream_options"] == {"x": 1, "include_usage": True}
    assert RESPONSES.stream_body(body) is body and ANTHROPIC.stream_body(body) is body


# ------------------------------------------------------------------ errors


def test_error_events_in_each_formats_shape() -> None:
    ((name, data),) = events(
        OPENAI_CHAT.error_event("gone", "upstream_error", code="upstream_unavailable")
    )
    assert (name, data["error"]["code"]) == ("message", "upstream_unavailable")
    ((name, data),) = events(ANTHROPIC.error_event("gone", "upstream_error"))
    assert (name, data) == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "gone"}},
    )
    ((name, data),) = events(
        RESPONSES.error_event("gone", "upstream_error", code="upstream_unavailable")
    )
    assert name == "error"
    TypeAdapter(ResponseStreamEvent).validate_python(data)
    assert (data["code"], data["message"]) == ("upstream_unavailable", "gone")


def test_answer_text_per_format() -> None:
    assert RESPONSES.answer_text(RESPONSE).startswith("Open Settings")
    assert OPENAI_CHAT.answer_text({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert (
        ANTHROPIC.answer_text(
            {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
        )
        == "ab"
    )
    assert OPENAI_CHAT.answer_text({}) == "" and ANTHROPIC.answer_text({}) == ""


@pytest.mark.parametrize(
    ("flavor", "answer"),
    [
        (OPENAI_CHAT, {"object": "chat.completion", "choices": [], "usage": {}}),
        (ANTHROPIC, {"type": "message", "content": [], "usage": {}}),
        (RESPONSES, {"object": "response", "output": [], "usage": {}}),
    ],
)
def test_a_flavour_knows_its_answers_from_garbage(flavor: Flavor, answer: dict[str, Any]) -> None:
    assert flavor.valid(answer)
    for garbage in (None, {"nope": 1}, [answer], "<html>bad gateway</html>", 1, {}):
        assert not flavor.valid(garbage)
    others = [f for f in FLAVORS if f is not flavor]
    assert not any(other.valid(answer) for other in others)
