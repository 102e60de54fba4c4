"""Anthropic Messages API streams in cache_service/sse.py: named events, assembly of the message
a stream carried, and replay of a stored message as a stream."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_service.flavors.anthropic import AnthropicStreamAssembler
from cache_service.flavors.anthropic import replay as replay_anthropic
from cache_service.simulator.app import create_simulated_app
from cache_service.sse import SSEParser, encode

FAST = settings(max_examples=60, deadline=None, database=None)

# The order Anthropic documents; runs of the same event collapse to one entry.
ORDER = [
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


def parse_events(chunks: list[bytes]) -> list[tuple[str, str]]:
    parser = SSEParser()
    out: list[tuple[str, str]] = []
    for chunk in chunks:
        out.extend(parser.feed_events(chunk))
    return out


def dedupe(names: list[str]) -> list[str]:
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


# ------------------------------------------------------------------ SSEParser / encode


def test_feed_events_names_each_event() -> None:
    raw = (
        b"event: message_start\n"
        b'data: {"type":"message_start"}\n'
        b"\n"
        b"event: named-but-empty\n"
        b"\n"
        b'data: {"a":1}\n'
        b"\n"
        b"event:ping\r\n"
        b'data: {"type": "ping"}\r\n'
        b"\r\n"
    )
    expected = [
        ("message_start", '{"type":"message_start"}'),
        # An event's name does not leak into the next one, which is unnamed: "message".
        ("message", '{"a":1}'),
        ("ping", '{"type": "ping"}'),
    ]
    assert parse_events([raw]) == expected
    assert parse_events([raw[i : i + 1] for i in range(len(raw))]) == expected
    # feed() still gives the data alone.
    assert list(SSEParser().feed(raw)) == [data for _, data in expected]


def test_encode_with_event_round_trips() -> None:
    payload = {"type": "content_block_delta", "index": 0}
    raw = encode(payload, event="content_block_delta")
    assert raw == b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0}\n\n'
    assert parse_events([raw]) == [
        ("content_block_delta", json.dumps(payload, separators=(",", ":")))
    ]
    assert encode("x") == b"data: x\n\n"  # unchanged without a name


# ------------------------------------------------------------------ AnthropicStreamAssembler


def message_start(**usage: Any) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 25, "output_tokens": 1},
        },
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def text_delta(index: int, text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def json_delta(index: int, partial: str) -> dict[str, Any]:
    delta = {"type": "input_json_delta", "partial_json": partial}
    return {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str | None = "end_turn", output_tokens: int = 15) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }


MESSAGE_STOP = {"type": "message_stop"}
PING = {"type": "ping"}


def text_stream(*pieces: str) -> list[dict[str, Any]]:
    return [
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        PING,
        *(text_delta(0, p) for p in pieces),
        block_stop(0),
        message_delta(),
        MESSAGE_STOP,
    ]


def feed(asm: AnthropicStreamAssembler, *items: dict[str, Any] | str) -> None:
    for item in items:
        asm.add(item if isinstance(item, str) else json.dumps(item))


def test_assembles_the_documented_text_stream() -> None:
    asm = AnthropicStreamAssembler()
    feed(asm, *text_stream("Hello", "!"))
    assert asm.complete
    assert asm.result() == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        # message_delta's count is the final one; the input count comes from message_start.
        "usage": {"input_tokens": 25, "output_tokens": 15},
    }


def test_usage_keeps_every_field_and_takes_cumulative_updates() -> None:
    asm = AnthropicStreamAssembler()
    start = message_start(input_tokens=10, cache_read_input_tokens=4, output_tokens=1)
    delta = message_delta(output_tokens=7)
    delta["usage"]["input_tokens"] = 12  # newer API versions repeat cumulative input counts
    feed(asm, start, block_start(0, {"type": "text", "text": ""}), text_delta(0, "x"))
    feed(asm, block_stop(0), delta, MESSAGE_STOP)
    assert asm.complete
    assert asm.result()["usage"] == {
        "input_tokens": 12,
        "cache_read_input_tokens": 4,
        "output_tokens": 7,
    }


def test_assembles_text_and_tool_use_blocks() -> None:
    asm = AnthropicStreamAssembler()
    tool = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    feed(
        asm,
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        text_delta(0, "Let me check."),
        block_stop(0),
        block_start(1, tool),
        json_delta(1, ""),
        json_delta(1, '{"city": "Pa'),
        json_delta(1, 'ris", "days": 2}'),
        block_stop(1),
        block_start(2, {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}),
        block_stop(2),
        message_delta("tool_use"),
        MESSAGE_STOP,
    )
    assert asm.complete
    body = asm.result()
    assert body["content"] == [
        {"type": "text", "text": "Let me check."},
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "get_weather",
            "input": {"city": "Paris", "days": 2},
        },
        # No JSON streamed at all: a tool without parameters.
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ]
    assert body["stop_reason"] == "tool_use"


def test_not_complete_without_message_stop() -> None:
    asm = AnthropicStreamAssembler()
    events = text_stream("Hi")
    feed(asm, *events[:-1])
    assert asm.stop_reason == "end_turn"
    assert not asm.complete
    feed(asm, events[-1])
    assert asm.complete


def test_cut_off_mid_content_is_not_complete() -> None:
    asm = AnthropicStreamAssembler()
    feed(asm, *text_stream("Hel", "lo")[:4])
    assert not asm.complete
    assert asm.result()["content"] == [{"type": "text", "text": "Hel"}]
    assert asm.result()["stop_reason"] is None


def test_not_complete_without_stop_reason() -> None:
    asm = AnthropicStreamAssembler()
    events = text_stream("Hi")
    events[-2] = message_delta(stop_reason=None)
    feed(asm, *events)
    assert asm.stopped
    assert not asm.complete


def test_not_complete_without_message_start() -> None:
    asm = AnthropicStreamAssembler()
    feed(asm, *text_stream("Hi")[1:])
    assert not asm.complete


def test_not_complete_with_a_block_left_open() -> None:
    asm = AnthropicStreamAssembler()
    events = text_stream("Hi")
    events.remove(block_stop(0))
    feed(asm, *events)
    assert not asm.malformed
    assert not asm.complete


@pytest.mark.parametrize(
    "garbage",
    ['{"type": "content_block_delta", ', "not json", "[1, 2]", '"text"', '{"no": "type"}'],
)
def test_malformed_event_makes_stream_incomplete(garbage: str) -> None:
    asm = AnthropicStreamAssembler()
    events: list[dict[str, Any] | str] = list(text_stream("Hi"))
    events.insert(4, garbage)
    feed(asm, *events)
    assert asm.malformed
    assert not asm.complete


@pytest.mark.parametrize(
    "bad",
    [
        # Deltas and stops for blocks that never started, or started twice.
        [text_delta(5, "x")],
        [block_stop(5)],
        [block_start(0, {"type": "text", "text": ""})],
        # Blocks and deltas we cannot rebuild exactly, so must not store.
        [block_start(1, {"type": "thinking", "thinking": ""})],
        [{"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta"}}],
        [json_delta(0, "{}")],  # a JSON delta into a text block
        [message_start()],  # a second message_start
        [{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}],
    ],
)
def test_events_that_cannot_be_rebuilt_make_stream_incomplete(bad: list[dict[str, Any]]) -> None:
    asm = AnthropicStreamAssembler()
    events = text_stream("Hi")
    feed(asm, *events[:4], *bad, *events[4:])
    assert asm.malformed
    assert not asm.complete


def test_bad_tool_json_makes_stream_incomplete() -> None:
    asm = AnthropicStreamAssembler()
    tool = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    feed(asm, message_start(), block_start(0, tool), json_delta(0, '{"a": '), block_stop(0))
    feed(asm, message_delta("tool_use"), MESSAGE_STOP)
    assert asm.malformed
    assert not asm.complete


def test_add_returns_parsed_event_or_none() -> None:
    asm = AnthropicStreamAssembler()
    event = message_start()
    assert asm.add(json.dumps(event)) == event
    assert asm.add(json.dumps(PING)) == PING
    assert asm.add("{") is None
    error = {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    assert asm.add(json.dumps(error)) == error


# ------------------------------------------------------------------ replay_anthropic


def stored(
    content: list[dict[str, Any]] | None = None,
    stop_reason: str = "end_turn",
    stop_sequence: str | None = None,
) -> dict[str, Any]:
    if content is None:
        text = "The quick brown fox jumps over the lazy dog, then naps in the sun."
        content = [{"type": "text", "text": text}]
    return {
        "id": "msg_stored",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": 11, "output_tokens": 17},
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


TOOL = {
    "type": "tool_use",
    "id": "toolu_1",
    "name": "get_weather",
    "input": {"city": "Paris", "unit": "c", "days": 3, "note": "a long-ish value with spaces"},
}


def replay_events(message: dict[str, Any]) -> list[tuple[str, str]]:
    return parse_events(list(replay_anthropic(message)))


def reassemble(message: dict[str, Any]) -> AnthropicStreamAssembler:
    asm = AnthropicStreamAssembler()
    for _name, data in replay_events(message):
        asm.add(data)
    return asm


@pytest.mark.parametrize(
    "message",
    [
        stored(),
        stored([text("short")]),
        stored([text("")]),
        stored([text("x" * 100)]),  # no spaces to split at
        stored([text("  leading and trailing spaces  and  doubled  ")]),
        stored([text("multi\nline\n\nanswer with ünïcödé ☃")]),
        stored([text("cut sho")], stop_reason="max_tokens"),
        stored([text("Counting: 1, 2,")], stop_reason="stop_sequence", stop_sequence=" 3"),
        stored([TOOL], stop_reason="tool_use"),
        stored([text("Let me check."), TOOL, {**TOOL, "id": "toolu_2", "input": {}}], "tool_use"),
        stored([]),
    ],
)
def test_replay_round_trip(message: dict[str, Any]) -> None:
    original = copy.deepcopy(message)
    asm = reassemble(message)
    assert message == original  # replay does not mutate what it serves
    assert asm.complete
    assert asm.result() == message


def test_replay_event_sequence_and_framing() -> None:
    raw = b"".join(replay_anthropic(stored([text("word " * 30)])))
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == ""
    for block in blocks[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == name_line[7:]
    names = [name for name, _ in parse_events([raw])]
    assert dedupe(names) == ORDER
    assert names.count("content_block_delta") > 3


def test_replay_events_have_the_documented_shapes() -> None:
    events = [json.loads(data) for _, data in replay_events(stored())]
    assert events[0] == {
        "type": "message_start",
        "message": {
            "id": "msg_stored",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 1},
        },
    }
    assert events[1] == block_start(0, text(""))
    assert events[2] == PING
    assert all(e == text_delta(0, e["delta"]["text"]) for e in events[3:-3])
    assert events[-3] == block_stop(0)
    assert events[-2] == message_delta("end_turn", 17)
    assert events[-1] == MESSAGE_STOP


def test_replay_tool_use_streams_its_input_as_json_deltas() -> None:
    events = [json.loads(data) for _, data in replay_events(stored([TOOL], "tool_use"))]
    assert events[1] == block_start(0, {**TOOL, "input": {}})
    partial = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert len(partial) > 1
    assert json.loads("".join(partial)) == TOOL["input"]


# ------------------------------------------------------------------ the simulator's real stream

SIM_BODY: dict[str, Any] = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 1000,
    "messages": [{"role": "user", "content": "Explain semantic caching in detail."}],
}


def sim_client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_simulated_app())
    return httpx.AsyncClient(transport=transport, base_url="http://sim")


async def assemble_stream(
    client: httpx.AsyncClient, body: dict[str, Any], **headers: str
) -> AnthropicStreamAssembler:
    parser = SSEParser()
    asm = AnthropicStreamAssembler()
    streamed = {**body, "stream": True}
    async with client.stream("POST", "/v1/messages", json=streamed, headers=headers) as r:
        assert r.status_code == 200
        async for chunk in r.aiter_bytes():
            for data in parser.feed(chunk):
                asm.add(data)
    return asm


@pytest.mark.parametrize("max_tokens", [1000, 4])
async def test_assembles_the_simulator_stream_to_its_non_streamed_message(max_tokens: int) -> None:
    body = {**SIM_BODY, "max_tokens": max_tokens}
    async with sim_client() as client:
        whole = (await client.post("/v1/messages", json=body)).json()
        asm = await assemble_stream(client, body)
    assert asm.complete
    message = asm.result()
    assert message["id"].startswith("msg_")
    assert {**message, "id": whole["id"]} == whole
    # And the cache's replay of it assembles back to the same message.
    assert reassemble(message).result() == message


async def test_relaying_the_simulator_stream_is_byte_identical() -> None:
    """What a relay writes (each event re-encoded under its own name) is what upstream sent."""
    async with sim_client() as client:
        raw = (await client.post("/v1/messages", json={**SIM_BODY, "stream": True})).content
    relayed = b"".join(encode(data, event=name) for name, data in parse_events([raw]))
    assert relayed == raw


async def test_a_dropped_simulator_stream_is_not_complete() -> None:
    async with sim_client() as client:
        asm = await assemble_stream(client, SIM_BODY, **{"X-Sim-Fault": "drop"})
        whole = await assemble_stream(client, SIM_BODY)
    assert not asm.complete
    assert asm.stop_reason is None
    partial = asm.result()["content"][0]["text"]
    assert partial
    assert whole.result()["content"][0]["text"].startswith(partial)


content_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200)


@FAST
@given(value=content_text, with_tool=st.booleans())
def test_replay_round_trip_any_text(value: str, with_tool: bool) -> None:
    message = stored([text(value), *([TOOL] if with_tool else [])])
    asm = reassemble(message)
    assert asm.complete
    assert asm.result() == message
