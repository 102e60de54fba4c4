"""SSE parsing, stream assembly and replay (cache_service/sse.py), called directly."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from cache_service.flavors.openai_chat import ChatStreamAssembler, replay
from cache_service.sse import SSEParser, encode

FAST = settings(max_examples=60, deadline=None, database=None)


def parse_all(chunks: list[bytes]) -> list[str]:
    parser = SSEParser()
    out: list[str] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def split_at(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(raw[start:p])
        start = p
    pieces.append(raw[start:])
    return pieces


# ------------------------------------------------------------------ SSEParser

STREAM = (
    b": keep-alive comment\n"
    b"event: message\n"
    b'data: {"a":1}\n'
    b"id: 7\n"
    b"\n"
    b"retry: 1000\n"
    b"data: first line\n"
    b"data: second line\n"
    b"\n"
    b"\n"
    b"data:no-space\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = ['{"a":1}', "first line\nsecond line", "no-space", "[DONE]"]


def test_whole_stream_at_once() -> None:
    assert parse_all([STREAM]) == EXPECTED


def test_byte_by_byte() -> None:
    assert parse_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_crlf_line_endings() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    assert parse_all([crlf]) == EXPECTED
    # A CR and its LF may arrive in different reads.
    assert parse_all([crlf[i : i + 1] for i in range(len(crlf))]) == EXPECTED


def test_comments_and_other_fields_are_not_data() -> None:
    raw = b": ping\n\n: another\nevent: x\nid: 1\n\n"
    assert parse_all([raw]) == []


def test_incomplete_event_is_held_back() -> None:
    parser = SSEParser()
    assert list(parser.feed(b'data: {"a":')) == []
    assert list(parser.feed(b"1}\n")) == []  # no blank line yet
    assert list(parser.feed(b"\n")) == ['{"a":1}']


def test_multibyte_utf8_split_inside_a_character() -> None:
    raw = encode({"c": "héllo ☃ 😀"})
    events = parse_all([raw[i : i + 1] for i in range(len(raw))])
    assert [json.loads(e) for e in events] == [{"c": "héllo ☃ 😀"}]


def test_encode_round_trips_through_parser() -> None:
    payload = {"x": "line\nbreak", "n": 1}  # json escapes the newline: one data line
    assert parse_all([encode(payload), encode("[DONE]")]) == [
        json.dumps(payload, separators=(",", ":")),
        "[DONE]",
    ]


# A data line's text: no line breaks, and no leading space (the field's separating space is
# optional, so a leading space in the value is not representable without an extra space).
line_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]),
    max_size=20,
).filter(lambda s: not s.startswith(" "))
events_strategy = st.lists(st.lists(line_text, min_size=1, max_size=3), max_size=6)


def serialise(events: list[list[str]], newline: bytes, comments: bool) -> bytes:
    out = b""
    for lines in events:
        if comments:
            out += b": comment" + newline
        for line in lines:
            out += b"data: " + line.encode() + newline
        out += newline
    return out


@FAST
@given(
    events=events_strategy,
    newline=st.sampled_from([b"\n", b"\r\n"]),
    comments=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_any_chunking_gives_the_same_events(
    events: list[list[str]], newline: bytes, comments: bool, cuts: list[int]
) -> None:
    raw = serialise(events, newline, comments)
    expected = ["\n".join(lines) for lines in events]
    assert parse_all([raw]) == expected
    assert parse_all(split_at(raw, cuts)) == expected
    assert parse_all([raw[i : i + 1] for i in range(len(raw))]) == expected


# ------------------------------------------------------------------ ChatStreamAssembler


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
    }
    body.update(extra)
    return body


def feed(asm: ChatStreamAssembler, *items: dict[str, Any] | str) -> None:
    for item in items:
        asm.add(item if isinstance(item, str) else json.dumps(item))


def test_assembles_content() -> None:
    asm = ChatStreamAssembler()
    feed(
        asm,
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": ", world"}),
        chunk({}, "stop"),
        "[DONE]",
    )
    assert asm.complete
    body = asm.result()
    assert body["id"] == "chatcmpl-9"
    assert body["object"] == "chat.completion"
    assert body["created"] == 1700000000
    assert body["model"] == "gpt-4o-mini-2024-07-18"
    assert body["system_fingerprint"] == "fp_1"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert "usage" not in body


def test_assembles_tool_calls_split_over_chunks() -> None:
    asm = ChatStreamAssembler()
    feed(
        asm,
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function"}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "get_"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "now"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    assert asm.complete
    message = asm.result()["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]
    assert asm.result()["choices"][0]["finish_reason"] == "tool_calls"


def test_usage_chunk_is_kept() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    asm = ChatStreamAssembler()
    feed(
        asm,
        chunk({"content": "Hi"}),
        chunk({}, "stop"),
        {**chunk(), "choices": [], "usage": usage},
        "[DONE]",
    )
    assert asm.complete
    assert asm.result()["usage"] == usage


def test_other_choices_are_ignored() -> None:
    asm = ChatStreamAssembler()
    other = chunk({"content": "B"})
    other["choices"][0]["index"] = 1
    feed(asm, chunk({"content": "A"}), other, chunk({}, "stop"), "[DONE]")
    assert asm.result()["choices"][0]["message"]["content"] == "A"


def test_not_complete_without_done() -> None:
    asm = ChatStreamAssembler()
    feed(asm, chunk({"content": "Hi"}), chunk({}, "stop"))
    assert asm.finish_reason == "stop"
    assert not asm.complete
    feed(asm, "[DONE]")
    assert asm.complete


def test_not_complete_without_finish_reason() -> None:
    asm = ChatStreamAssembler()
    feed(asm, chunk({"content": "Hi"}), "[DONE]")
    assert asm.done
    assert not asm.complete


@pytest.mark.parametrize("garbage", ['{"choices": [', "not json", "[1, 2]", '"text"'])
def test_malformed_event_makes_stream_incomplete(garbage: str) -> None:
    asm = ChatStreamAssembler()
    feed(asm, chunk({"content": "Hi"}), garbage, chunk({}, "stop"), "[DONE]")
    assert asm.malformed
    assert not asm.complete


def test_error_event_makes_stream_incomplete() -> None:
    asm = ChatStreamAssembler()
    feed(asm, chunk({"content": "Hi"}), {"error": {"message": "overloaded"}}, "[DONE]")
    assert not asm.complete


def test_add_returns_parsed_chunk_or_none() -> None:
    asm = ChatStreamAssembler()
    c = chunk({"content": "x"})
    assert asm.add(json.dumps(c)) == c
    assert asm.add("[DONE]") is None
    assert asm.add("{") is None


# ------------------------------------------------------------------ replay


def stored(
    content: str | None = "The quick brown fox jumps over the lazy dog, then naps in the sun.",
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str = "stop",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-stored",
        "object": "chat.completion",
        "created": 1700000123,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_s",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 17, "total_tokens": 28},
    }


TOOL_CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    },
    {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
]


def replay_events(completion: dict[str, Any], include_usage: bool) -> list[str]:
    return parse_all(list(replay(completion, include_usage=include_usage)))


def reassemble(completion: dict[str, Any], include_usage: bool) -> ChatStreamAssembler:
    asm = ChatStreamAssembler()
    for data in replay_events(completion, include_usage):
        asm.add(data)
    return asm


@pytest.mark.parametrize(
    "completion",
    [
        stored(),
        stored(content="short"),
        stored(content="x" * 100),  # no spaces to split at
        stored(content="  leading and trailing spaces  and  doubled  "),
        stored(content="multi\nline\n\nanswer with ünïcödé ☃"),
        stored(content=None, tool_calls=TOOL_CALLS, finish="tool_calls"),
        stored(content="Let me check.", tool_calls=TOOL_CALLS[:1], finish="tool_calls"),
    ],
)
@pytest.mark.parametrize("include_usage", [True, False])
def test_replay_round_trip(completion: dict[str, Any], include_usage: bool) -> None:
    original = copy.deepcopy(completion)
    asm = reassemble(completion, include_usage)
    assert completion == original  # replay does not mutate what it serves
    assert asm.complete
    body = asm.result()
    want = completion["choices"][0]
    got = body["choices"][0]
    assert got["message"]["content"] == want["message"]["content"]
    assert got["message"].get("tool_calls") == want["message"].get("tool_calls")
    assert got["finish_reason"] == want["finish_reason"]
    assert body["id"] == completion["id"]
    assert body["model"] == completion["model"]
    assert body["created"] == completion["created"]
    assert body["system_fingerprint"] == completion["system_fingerprint"]
    if include_usage:
        assert body["usage"] == completion["usage"]
    else:
        assert "usage" not in body


def test_replay_without_include_usage_has_no_usage_chunk() -> None:
    events = replay_events(stored(), include_usage=False)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(len(c["choices"]) == 1 for c in chunks)


def test_replay_with_include_usage_ends_with_usage_chunk() -> None:
    events = replay_events(stored(), include_usage=True)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == []
    assert last["usage"] == stored()["usage"]
    assert sum("usage" in json.loads(e) for e in events[:-1]) == 1


def test_replay_include_usage_but_none_stored() -> None:
    completion = stored()
    del completion["usage"]
    events = replay_events(completion, include_usage=True)
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_replay_streams_a_long_answer_in_several_deltas() -> None:
    text = "word " * 50
    events = replay_events(stored(content=text), include_usage=False)
    deltas = [json.loads(e)["choices"][0]["delta"].get("content") for e in events if e != "[DONE]"]
    pieces = [d for d in deltas if d]
    assert len(pieces) > 3
    assert "".join(pieces) == text


def test_replay_first_chunk_carries_role_and_last_the_finish() -> None:
    chunks = [json.loads(e) for e in replay_events(stored(), include_usage=False)[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


@pytest.mark.parametrize(
    "completion",
    [stored(), stored(content=None, tool_calls=TOOL_CALLS, finish="tool_calls")],
)
@pytest.mark.parametrize("include_usage", [True, False])
def test_replayed_chunks_validate_as_openai_sdk_types(
    completion: dict[str, Any], include_usage: bool
) -> None:
    events = replay_events(completion, include_usage)
    assert events[-1] == "[DONE]"
    parsed = [ChatCompletionChunk.model_validate(json.loads(e)) for e in events[:-1]]
    assert parsed
    assert all(p.id == completion["id"] for p in parsed)
    if include_usage:
        assert parsed[-1].usage is not None
        assert parsed[-1].usage.total_tokens == 28
    text = "".join(c.delta.content or "" for p in parsed for c in p.choices)
    assert text == (completion["choices"][0]["message"]["content"] or "")
    calls = [tc for p in parsed for c in p.choices for tc in (c.delta.tool_calls or [])]
    want_calls = completion["choices"][0]["message"].get("tool_calls") or []
    assert [(tc.id, tc.function.name if tc.function else None) for tc in calls] == [
        (w["id"], w["function"]["name"]) for w in want_calls
    ]


content_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=200
)


@FAST
@given(text=content_text, include_usage=st.booleans())
def test_replay_round_trip_any_text(text: str, include_usage: bool) -> None:
    asm = reassemble(stored(content=text), include_usage)
    assert asm.complete
    assert asm.result()["choices"][0]["message"]["content"] == text
