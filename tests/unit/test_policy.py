"""Cache directives (cache_service/cache/policy.py) and each flavour's store refusals,
called directly."""

from __future__ import annotations

from typing import Any

import pytest

from cache_service.cache.policy import (
    CacheDirectives,
    DirectiveError,
    lookup_allowed,
    parse_directives,
)
from cache_service.flavors import OPENAI_CHAT
from cache_service.flavors.anthropic import store_refusal as anthropic_store_refusal
from cache_service.flavors.openai_chat import store_refusal

DEFAULT_TTL = 3600.0
MAX_TTL = 86400.0


def directives(cache_control: str | None = None, ttl: str | None = None) -> CacheDirectives:
    return parse_directives(cache_control, ttl, default_ttl_s=DEFAULT_TTL, max_ttl_s=MAX_TTL)


# ------------------------------------------------------------------ parse_directives


def test_no_headers_read_write_default_ttl() -> None:
    assert directives() == CacheDirectives(read=True, write=True, ttl_s=DEFAULT_TTL)


def test_empty_headers_are_like_none() -> None:
    assert directives("", "") == CacheDirectives(read=True, write=True, ttl_s=DEFAULT_TTL)
    assert directives(" , ", "   ") == CacheDirectives(read=True, write=True, ttl_s=DEFAULT_TTL)


def test_no_cache_skips_read_but_still_writes() -> None:
    d = directives("no-cache")
    assert (d.read, d.write) == (False, True)


def test_no_store_skips_read_and_write() -> None:
    d = directives("no-store")
    assert (d.read, d.write) == (False, False)


@pytest.mark.parametrize(
    ("header", "read", "write"),
    [
        ("max-age=0, no-cache", False, True),
        ("private,NO-CACHE , max-age=60", False, True),
        ("  No-Store  ", False, False),
        ("no-cache,no-store", False, False),
        ("max-age=0,  no-store,must-revalidate", False, False),
        ("max-age=60, private", True, True),
        ("no-cachex", True, True),  # a different token, not no-cache
        ("no-transform", True, True),
    ],
)
def test_cache_control_tokens(header: str, read: bool, write: bool) -> None:
    d = directives(header)
    assert (d.read, d.write) == (read, write)
    assert d.ttl_s == DEFAULT_TTL


@pytest.mark.parametrize(("raw", "expected"), [("10", 10.0), (" 2.5 ", 2.5), ("1e3", 1000.0)])
def test_ttl_header_sets_ttl(raw: str, expected: float) -> None:
    assert directives(ttl=raw).ttl_s == expected


def test_ttl_header_is_capped_at_max() -> None:
    assert directives(ttl=str(MAX_TTL * 10)).ttl_s == MAX_TTL
    assert directives(ttl=str(MAX_TTL)).ttl_s == MAX_TTL
    assert directives(ttl=str(MAX_TTL - 1)).ttl_s == MAX_TTL - 1


def test_ttl_combined_with_no_cache() -> None:
    assert directives("no-cache", "60") == CacheDirectives(read=False, write=True, ttl_s=60.0)


@pytest.mark.parametrize("raw", ["soon", "10s", "0", "-5", "-0.001", "nan", "1,5"])
def test_invalid_ttl_raises(raw: str) -> None:
    with pytest.raises(DirectiveError, match="X-Cache-TTL"):
        directives(ttl=raw)


def test_directive_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        directives(ttl="x")


# ------------------------------------------------------------------ lookup_allowed


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        ({}, True),
        ({"n": None}, True),
        ({"n": 1}, True),
        ({"n": 2}, False),
        ({"n": 8}, False),
    ],
)
def test_lookup_allowed_only_for_one_choice(body: dict[str, Any], allowed: bool) -> None:
    request = OPENAI_CHAT.canonical({"model": "m", "messages": [], **body})
    assert lookup_allowed(request) is allowed


# ------------------------------------------------------------------ store_refusal (OpenAI)


def completion(
    content: str | None = "Use the reset link.",
    finish: str | None = "stop",
    **message: Any,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


TOOL_CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
]


def refusal(status: int, body: Any, *, tools: bool = False) -> str | None:
    return store_refusal(status, body, cache_tool_calls=tools)


def test_plain_answer_is_accepted() -> None:
    assert refusal(200, completion()) is None
    assert refusal(201, completion()) is None


@pytest.mark.parametrize("status", [199, 300, 304, 400, 429, 500, 503])
def test_non_2xx_is_refused(status: int) -> None:
    reason = refusal(status, completion())
    assert reason is not None
    assert str(status) in reason


def test_non_object_body_is_refused() -> None:
    assert refusal(200, [completion()]) is not None
    assert refusal(200, "ok") is not None
    assert refusal(200, None) is not None


def test_error_body_is_refused_even_with_200() -> None:
    body = {"error": {"message": "overloaded", "type": "server_error"}}
    assert refusal(200, body) == "error body"
    assert refusal(200, {**completion(), "error": None}) == "error body"


@pytest.mark.parametrize("count", [0, 2, 3])
def test_not_exactly_one_choice_is_refused(count: int) -> None:
    body = completion()
    body["choices"] = [dict(body["choices"][0], index=i) for i in range(count)]
    assert refusal(200, body) == "not exactly one choice"


def test_missing_choices_is_refused() -> None:
    body = completion()
    del body["choices"]
    assert refusal(200, body) == "not exactly one choice"


def test_choice_without_message_is_refused() -> None:
    body = completion()
    del body["choices"][0]["message"]
    assert refusal(200, body) == "choice without a message"


@pytest.mark.parametrize("finish", ["length", "content_filter"])
def test_truncated_or_filtered_is_refused(finish: str) -> None:
    reason = refusal(200, completion(finish=finish))
    assert reason is not None
    assert finish in reason


def test_missing_finish_reason_is_refused() -> None:
    assert refusal(200, completion(finish=None)) == "no finish_reason"
    body = completion()
    del body["choices"][0]["finish_reason"]
    assert refusal(200, body) == "no finish_reason"


def test_tool_calls_refused_unless_enabled() -> None:
    body = completion(content=None, finish="tool_calls", tool_calls=TOOL_CALLS)
    assert refusal(200, body, tools=False) == "tool calls"
    assert refusal(200, body, tools=True) is None


def test_tool_calls_with_text_refused_unless_enabled() -> None:
    body = completion(content="Let me check.", finish="tool_calls", tool_calls=TOOL_CALLS)
    assert refusal(200, body, tools=False) == "tool calls"
    assert refusal(200, body, tools=True) is None


def test_legacy_function_call_refused_when_tools_disabled() -> None:
    fc = {"name": "get_weather", "arguments": "{}"}
    body = completion(content=None, finish="function_call", function_call=fc)
    assert refusal(200, body, tools=False) == "tool calls"


@pytest.mark.parametrize("content", [None, ""])
def test_empty_answer_is_refused(content: str | None) -> None:
    assert refusal(200, completion(content=content)) == "empty answer"
    assert refusal(200, completion(content=content), tools=True) == "empty answer"


def test_empty_tool_calls_list_is_not_a_tool_call() -> None:
    assert refusal(200, completion(tool_calls=[])) is None
    assert refusal(200, completion(content="", tool_calls=[])) == "empty answer"


# ------------------------------------------------------------------ anthropic_store_refusal


def message(
    content: list[dict[str, Any]] | None = None, stop: str | None = "end_turn"
) -> dict[str, Any]:
    if content is None:
        content = [{"type": "text", "text": "Use the reset link."}]
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 4},
    }


TOOL_USE: list[dict[str, Any]] = [
    {"type": "text", "text": "Checking."},
    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
]


def a_refusal(status: int, body: Any, *, tools: bool = False) -> str | None:
    return anthropic_store_refusal(status, body, cache_tool_calls=tools)


@pytest.mark.parametrize("stop", ["end_turn", "stop_sequence"])
def test_anthropic_complete_message_is_accepted(stop: str) -> None:
    assert a_refusal(200, message(stop=stop)) is None


@pytest.mark.parametrize("status", [400, 429, 500, 529])
def test_anthropic_non_2xx_is_refused(status: int) -> None:
    reason = a_refusal(status, message())
    assert reason is not None
    assert str(status) in reason


def test_anthropic_error_body_is_refused() -> None:
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert a_refusal(200, err) == "not a message"
    assert a_refusal(200, [message()]) == "not a message"
    assert a_refusal(200, {**message(), "type": "completion"}) == "not a message"


@pytest.mark.parametrize("stop", ["max_tokens", "refusal", None])
def test_anthropic_incomplete_stop_reasons_are_refused(stop: str | None) -> None:
    reason = a_refusal(200, message(stop=stop))
    assert reason is not None
    assert reason.startswith("stop_reason")


@pytest.mark.parametrize("stop", ["pause_turn", "model_context_window_exceeded"])
def test_anthropic_unfinished_turn_is_refused(stop: str) -> None:
    assert a_refusal(200, message(stop=stop)) is not None


def test_anthropic_empty_content_is_refused() -> None:
    assert a_refusal(200, message(content=[])) == "empty answer"
    body = message()
    del body["content"]
    assert a_refusal(200, body) == "empty answer"


def test_anthropic_tool_use_refused_unless_enabled() -> None:
    body = message(content=TOOL_USE, stop="tool_use")
    assert a_refusal(200, body, tools=False) == "tool calls"
    assert a_refusal(200, body, tools=True) is None
