"""Anthropic's Messages API (`POST /v1/messages`): the canonical view of its requests (the
system prompt is a top-level field), usage and storability, its named-event streams, and its
error shape, which the anthropic SDK parses into its exception classes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from cache_service.api.schemas import AnthropicRequest
from cache_service.cache.keys import ANSWER_PARAMS
from cache_service.flavors.base import (
    CanonicalRequest,
    answer_params,
    int_or_zero,
    positive_int,
    typed_event,
    usage_object,
)
from cache_service.pricing import Usage
from cache_service.protocols import AuthScheme
from cache_service.sse import encode, pieces

# Anthropic's error types are a closed set; ours that it lacks map to its nearest.
_ERROR_TYPES = {"upstream_error": "api_error", "server_error": "api_error"}


class AnthropicMessages:
    name = "anthropic"
    route = "/v1/messages"
    upstream_path = "messages"
    auth: AuthScheme = "x-api-key"
    schema: type[BaseModel] = AnthropicRequest

    def canonical(self, body: dict[str, Any]) -> CanonicalRequest:
        return CanonicalRequest(
            model=str(body["model"]),
            system=body.get("system"),
            messages=body["messages"],
            params=answer_params(body, ANSWER_PARAMS),
            completion_cap=positive_int(body.get("max_tokens")),
            stream=body.get("stream") is True,
        )

    def usage(self, body: Any) -> Usage:
        # Anthropic counts cache reads and writes apart from `input_tokens` (OpenAI counts
        # them inside): added up here, so a prompt's tokens mean the same in every format.
        usage = usage_object(body)
        read = int_or_zero(usage.get("cache_read_input_tokens"))
        written = int_or_zero(usage.get("cache_creation_input_tokens"))
        prompt = int_or_zero(usage.get("input_tokens")) + read + written
        return Usage(prompt, int_or_zero(usage.get("output_tokens")), read, written)

    def valid(self, body: Any) -> bool:
        return (
            isinstance(body, dict)
            and body.get("type") == "message"
            and isinstance(body.get("content"), list)
        )

    def refusal(self, status: int, body: Any, *, cache_tool_calls: bool) -> str | None:
        return store_refusal(status, body, cache_tool_calls=cache_tool_calls)

    def stream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return body  # usage rides on message_start and message_delta anyway

    def assembler(self) -> AnthropicStreamAssembler:
        return AnthropicStreamAssembler()

    def usage_only(self, event: dict[str, Any] | None) -> bool:
        return False

    def replay(self, body: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
        return replay(body)

    def error_body(
        self, message: str, type_: str, *, param: str | None = None, code: str | None = None
    ) -> dict[str, Any]:
        return error_body(message, type_, code=code)

    def error_event(
        self, message: str, type_: str, *, param: str | None = None, code: str | None = None
    ) -> bytes:
        return encode(error_body(message, type_, code=code), event="error")

    def answer_text(self, body: dict[str, Any]) -> str:
        content = body.get("content")
        if not isinstance(content, list):
            return ""
        return "".join(
            str(b.get("text") or "")
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )


def error_body(message: str, type_: str, *, code: str | None = None) -> dict[str, Any]:
    kind = "request_too_large" if code == "request_too_large" else type_
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(kind, kind), "message": message}}


def store_refusal(status: int, response: Any, *, cache_tool_calls: bool) -> str | None:
    if not 200 <= status < 300:
        return f"status {status}"
    if not isinstance(response, dict) or response.get("type") != "message":
        return "not a message"
    stop = response.get("stop_reason")
    # Only a finished turn may be replayed; pause_turn and context overflow are unfinished.
    if stop in ("max_tokens", "refusal", "pause_turn", "model_context_window_exceeded") or (
        stop is None
    ):
        return f"stop_reason {stop}"
    content = response.get("content")
    if not isinstance(content, list) or not content:
        return "empty answer"
    uses_tools = any(isinstance(c, dict) and c.get("type") == "tool_use" for c in content)
    if uses_tools and not cache_tool_calls:
        return "tool calls"
    return None


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
        event = typed_event(data)
        if event is None:
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

    def result(self) -> dict[str, Any]:
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


def replay(message: dict[str, Any]) -> Iterator[bytes]:
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
            deltas = [{"type": "text_delta", "text": p} for p in pieces(block.get("text") or "")]
        elif kind == "tool_use":
            opening = {"type": "tool_use", "id": block.get("id"), "name": block.get("name")}
            opening["input"] = {}
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(arguments)]
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
