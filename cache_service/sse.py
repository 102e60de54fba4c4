"""Server-sent events for chat completions and Anthropic messages: parse an upstream stream,
assemble the answer it carried (to store it), and replay a stored answer as a stream (to serve
a hit)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

DONE = "[DONE]"


class SSEParser:
    """Incremental: feed raw bytes as they arrive, get each complete event's data."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> Iterator[str]:
        for _event, data in self.feed_events(chunk):
            yield data

    def feed_events(self, chunk: bytes) -> Iterator[tuple[str, str]]:
        """Like `feed`, with each event's name: Anthropic's stream names every event, and a
        relay must write the name back (the SDK dispatches on it). Unnamed events are
        "message", as the SSE spec says."""
        self._buffer += chunk
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                return
            line = self._buffer[:cut].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buffer = self._buffer[cut + 1 :]
            if line == "":
                if self._data:
                    yield self._event or "message", "\n".join(self._data)
                    self._data = []
                # The name belongs to one event only, even one without data (never dispatched).
                self._event = ""
            elif line.startswith("data:"):
                self._data.append(line[5:].lstrip(" "))
            elif line.startswith("event:"):
                self._event = line[6:].lstrip(" ")
            # other fields (id:, retry:, comments) carry nothing we relay or store


def encode(data: str | dict[str, Any], *, event: str | None = None) -> bytes:
    """One event; `event` adds the `event:` line Anthropic streams carry (OpenAI's have none)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {text}\n\n".encode()


class ChatStreamAssembler:
    """Rebuilds the chat.completion a stream delivered, choice 0 only (n > 1 is never
    stored). `complete` is true only after a finish_reason and [DONE] both arrived."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.content: list[str] = []
        self.role = "assistant"
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.malformed = False

    def add(self, data: str) -> dict[str, Any] | None:
        """Take one event's data; return the parsed chunk (None for [DONE] or garbage)."""
        if data.strip() == DONE:
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            self.malformed = True
            return None
        if not isinstance(chunk, dict):
            self.malformed = True
            return None
        if "error" in chunk:
            self.malformed = True
            return chunk
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk and key not in self.meta:
                self.meta[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("role"):
                self.role = delta["role"]
            if delta.get("content"):
                self.content.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = self.tool_calls.setdefault(
                    call.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return chunk

    @property
    def complete(self) -> bool:
        return self.done and self.finish_reason is not None and not self.malformed

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content) or None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        body: dict[str, Any] = {
            "id": self.meta.get("id", ""),
            "object": "chat.completion",
            "created": self.meta.get("created", 0),
            "model": self.meta.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
        }
        if "system_fingerprint" in self.meta:
            body["system_fingerprint"] = self.meta["system_fingerprint"]
        if self.usage is not None:
            body["usage"] = self.usage
        return body


class AnthropicStreamAssembler:
    """Rebuilds the Anthropic message a Messages API stream delivered. `complete` is true only
    after message_start, a stop_reason and message_stop all arrived, every content block
    was closed, and nothing malformed (or that we could not rebuild exactly) came in between.

    Text and tool_use blocks are rebuilt; any other block or delta type (thinking,
    citations, ...) marks the stream malformed, because storing it without them would serve
    a different answer than the upstream gave."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.role = "assistant"
        self.blocks: dict[int, dict[str, Any]] = {}
        self._partial_json: dict[int, list[str]] = {}
        self._open: set[int] = set()
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage: dict[str, Any] = {}
        self.started = False
        self.stopped = False
        self.malformed = False

    def add(self, data: str) -> dict[str, Any] | None:
        """Take one event's data; return the parsed event (None for garbage)."""
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            self.malformed = True
            return None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.malformed = True
            return None
        kind = event["type"]
        if kind == "message_start":
            self._start(event.get("message"))
        elif kind == "content_block_start":
            self._block_start(event.get("index"), event.get("content_block"))
        elif kind == "content_block_delta":
            self._block_delta(event.get("index"), event.get("delta"))
        elif kind == "content_block_stop":
            self._block_stop(event.get("index"))
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            if delta.get("stop_reason"):
                self.stop_reason = delta["stop_reason"]
            if "stop_sequence" in delta:
                self.stop_sequence = delta["stop_sequence"]
            # Its counts are cumulative, so they replace message_start's.
            if isinstance(event.get("usage"), dict):
                self.usage.update(event["usage"])
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            self.malformed = True
        # "ping", and event types added later, carry nothing of the answer.
        return event

    def _start(self, message: Any) -> None:
        if not isinstance(message, dict) or self.started:
            self.malformed = True
            return
        self.started = True
        for key in ("id", "model"):
            if key in message:
                self.meta[key] = message[key]
        if message.get("role"):
            self.role = message["role"]
        if isinstance(message.get("usage"), dict):
            self.usage.update(message["usage"])

    def _block_start(self, index: Any, block: Any) -> None:
        if (
            not isinstance(index, int)
            or index in self.blocks
            or not isinstance(block, dict)
            or block.get("type") not in ("text", "tool_use")
        ):
            self.malformed = True
            return
        if block["type"] == "text":
            if block.get("citations"):
                self.malformed = True
            self.blocks[index] = {"type": "text", "text": block.get("text") or ""}
        else:
            self.blocks[index] = {
                "type": "tool_use",
                "id": block.get("id"),
                "name": block.get("name"),
                "input": {},
            }
            self._partial_json[index] = []
        self._open.add(index)

    def _block_delta(self, index: Any, delta: Any) -> None:
        if index not in self._open or not isinstance(delta, dict):
            self.malformed = True
            return
        block = self.blocks[index]
        if delta.get("type") == "text_delta" and block["type"] == "text":
            block["text"] += delta.get("text") or ""
        elif delta.get("type") == "input_json_delta" and block["type"] == "tool_use":
            self._partial_json[index].append(delta.get("partial_json") or "")
        else:
            self.malformed = True

    def _block_stop(self, index: Any) -> None:
        if index not in self._open:
            self.malformed = True
            return
        self._open.discard(index)
        block = self.blocks[index]
        if block["type"] != "tool_use":
            return
        raw = "".join(self._partial_json.pop(index))
        # A tool without parameters streams no JSON at all: its input is {}.
        if raw.strip():
            try:
                block["input"] = json.loads(raw)
            except json.JSONDecodeError:
                self.malformed = True

    @property
    def complete(self) -> bool:
        return (
            self.started
            and self.stopped
            and self.stop_reason is not None
            and not self._open
            and not self.malformed
        )

    def message(self) -> dict[str, Any]:
        return {
            "id": self.meta.get("id", ""),
            "type": "message",
            "role": self.role,
            "model": self.meta.get("model", ""),
            "content": [self.blocks[i] for i in sorted(self.blocks)],
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": dict(self.usage),
        }


def _pieces(text: str, size: int = 24) -> list[str]:
    """Split at spaces into pieces of about `size` characters, so a replayed hit streams
    like a real answer (several deltas) but costs few events."""
    out: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space if space > start else end
        out.append(text[start:end])
        start = end
    return out


def replay(completion: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """A stored chat.completion as the SSE chunks the openai SDK's stream iterator expects."""
    base = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if "system_fingerprint" in completion:
        base["system_fingerprint"] = completion["system_fingerprint"]
    choice = completion["choices"][0]
    message = choice.get("message") or {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return encode({**base, "choices": [c]})

    yield chunk({"role": message.get("role", "assistant"), "content": ""})
    for piece in _pieces(message.get("content") or ""):
        yield chunk({"content": piece})
    for i, call in enumerate(message.get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": i, **call}]})
    yield chunk({}, choice.get("finish_reason") or "stop")
    if include_usage and completion.get("usage"):
        yield encode({**base, "choices": [], "usage": completion["usage"]})
    yield encode(DONE)


def replay_anthropic(message: dict[str, Any]) -> Iterator[bytes]:
    """A stored Anthropic message as the named SSE events the anthropic SDK's stream expects:
    message_start, then per block content_block_start, deltas and content_block_stop (a
    ping after the first start, as upstream sends one), then message_delta and
    message_stop."""
    usage = message.get("usage") or {}

    def event(payload: dict[str, Any]) -> bytes:
        return encode(payload, event=payload["type"])

    # Anthropic reports the input side up front and a token-so-far output count; the final
    # output count comes in message_delta.
    start = {
        "id": message.get("id", ""),
        "type": "message",
        "role": message.get("role", "assistant"),
        "model": message.get("model", ""),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "input_tokens": usage.get("input_tokens", 0), "output_tokens": 1},
    }
    yield event({"type": "message_start", "message": start})
    for index, block in enumerate(message.get("content") or []):
        kind = block.get("type")
        if kind == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block.get("text") or "")]
        elif kind == "tool_use":
            opening = {"type": "tool_use", "id": block.get("id"), "name": block.get("name")}
            opening["input"] = {}
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(arguments)]
        else:
            # Not something the assembler stores, but a whole block in content_block_start is
            # still what the SDK accumulates, so it arrives intact.
            opening, deltas = dict(block), []
        yield event({"type": "content_block_start", "index": index, "content_block": opening})
        if index == 0:
            yield event({"type": "ping"})
        for delta in deltas:
            yield event({"type": "content_block_delta", "index": index, "delta": delta})
        yield event({"type": "content_block_stop", "index": index})
    yield event(
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message.get("stop_reason") or "end_turn",
                "stop_sequence": message.get("stop_sequence"),
            },
            "usage": {"output_tokens": usage.get("output_tokens", 0)},
        }
    )
    yield event({"type": "message_stop"})


class Fanout:
    """One upstream stream, many readers: each reader gets every event from the start, at
    its own pace, including events pushed before it joined."""

    def __init__(self) -> None:
        self._events: list[tuple[bytes, bool]] = []
        self.done = False
        self._changed = asyncio.Event()
        self.started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        """True once the upstream stream is open; False if it never opened."""

    def start(self) -> None:
        self.started.set_result(True)

    def abandon(self) -> None:
        """The upstream call failed before streaming: followers make their own calls."""
        if not self.started.done():
            self.started.set_result(False)
        self.finish()

    def push(self, data: bytes, *, usage_only: bool = False) -> None:
        self._events.append((data, usage_only))
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        # A fresh Event per change: readers waiting on the old one wake, later waits block.
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, include_usage: bool) -> AsyncIterator[bytes]:
        """The events; the usage-only chunk only for readers that asked for usage."""
        i = 0
        while True:
            changed = self._changed
            while i < len(self._events):
                data, usage_only = self._events[i]
                i += 1
                if include_usage or not usage_only:
                    yield data
            if self.done:
                return
            await changed.wait()
