"""OpenAI's Responses API (`POST /v1/responses`, what `client.responses.create` calls): the
canonical view of its requests (`input` as a string or a list of items, `instructions` as the
system prompt), usage and storability, stream assembly and replay, and its error shape.

A stream is assembled from its final `response.completed` event, which carries the whole
response; replay writes the event sequence the openai SDK's stream expects, from
`response.created` to `response.completed`, numbered by `sequence_number`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from cache_service.api.schemas import ResponsesRequest
from cache_service.flavors.base import (
    CanonicalRequest,
    answer_params,
    openai_usage,
    positive_int,
    typed_event,
)
from cache_service.flavors.openai_chat import error_body
from cache_service.pricing import Usage
from cache_service.protocols import AuthScheme
from cache_service.sse import encode, pieces

# Request fields that change what the model answers. `previous_response_id` and
# `conversation` carry the earlier turns by reference, so they belong to the scope like the
# earlier turns themselves; `store`, `metadata`, `user`, `stream` do not change the answer.
ANSWER_PARAMS: tuple[str, ...] = (
    "temperature",
    "top_p",
    "top_logprobs",
    "max_output_tokens",
    "max_tool_calls",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "reasoning",
    "include",
    "truncation",
    "previous_response_id",
    "conversation",
    "prompt",
    "background",
    "service_tier",
)

# Output items whose content is a finished answer. Hosted tools (web search, file search,
# code interpreter...) answer from the world at that moment, so their results are not kept.
_STORABLE_ITEMS = frozenset({"message", "reasoning", "function_call"})


def input_messages(value: Any) -> list[dict[str, Any]]:
    """`input` as chat-shaped turns: a string is one user turn; message items keep their
    role and content; other items (function calls and their outputs, reasoning, item
    references) become turns of their own type, hashed whole into the scope and never
    mistaken for the user's question."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    turns: list[dict[str, Any]] = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and item.get("type", "message") == "message" and "role" in item:
            turns.append({"role": item["role"], "content": item.get("content")})
        else:
            kind = item.get("type") if isinstance(item, dict) else None
            turns.append({"role": str(kind or "item"), "content": item})
    return turns


class OpenAIResponses:
    name = "responses"
    route = "/v1/responses"
    upstream_path = "responses"
    auth: AuthScheme = "bearer"
    schema: type[BaseModel] = ResponsesRequest

    def canonical(self, body: dict[str, Any]) -> CanonicalRequest:
        return CanonicalRequest(
            model=str(body["model"]),
            system=body.get("instructions"),
            messages=input_messages(body.get("input")),
            params=answer_params(body, ANSWER_PARAMS),
            completion_cap=positive_int(body.get("max_output_tokens")),
            stream=body.get("stream") is True,
        )

    def usage(self, body: Any) -> Usage:
        return openai_usage(body, "input_tokens", "output_tokens", "input_tokens_details")

    def valid(self, body: Any) -> bool:
        return isinstance(body, dict) and isinstance(body.get("output"), list)

    def refusal(self, status: int, body: Any, *, cache_tool_calls: bool) -> str | None:
        return store_refusal(status, body, cache_tool_calls=cache_tool_calls)

    def stream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return body  # usage arrives in response.completed anyway

    def assembler(self) -> ResponsesStreamAssembler:
        return ResponsesStreamAssembler()

    def usage_only(self, event: dict[str, Any] | None) -> bool:
        return False

    def replay(self, body: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
        return replay(body)

    def error_body(
        self, message: str, type_: str, *, param: str | None = None, code: str | None = None
    ) -> dict[str, Any]:
        return error_body(message, type_, param=param, code=code)

    def error_event(
        self, message: str, type_: str, *, param: str | None = None, code: str | None = None
    ) -> bytes:
        event = {
            "type": "error",
            "code": code or type_,
            "message": message,
            "param": param,
            "sequence_number": 0,
        }
        return encode(event, event="error")

    def answer_text(self, body: dict[str, Any]) -> str:
        return output_text(body)


def output_text(response: dict[str, Any]) -> str:
    """What the SDK's `response.output_text` gives: every output_text part, in order."""
    texts: list[str] = []
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
    return "".join(texts)


def store_refusal(status: int, response: Any, *, cache_tool_calls: bool) -> str | None:
    if not 200 <= status < 300:
        return f"status {status}"
    if not isinstance(response, dict) or response.get("object") != "response":
        return "not a response"
    if response.get("error"):
        return "error body"
    # queued / in_progress (background mode), incomplete (max_output_tokens, content
    # filter), failed, cancelled: only a finished answer may be replayed.
    if response.get("status") != "completed":
        return f"status {response.get('status')}"
    output = response.get("output")
    if not isinstance(output, list) or not output:
        return "empty answer"
    kinds = {item.get("type") for item in output if isinstance(item, dict)}
    if not kinds <= _STORABLE_ITEMS:
        return "hosted tool call"
    if "function_call" in kinds and not cache_tool_calls:
        return "tool calls"
    if "function_call" not in kinds and not output_text(response):
        return "empty answer"
    return None


class ResponsesStreamAssembler:
    """The response a stream delivered, taken from its final event. `complete` only after
    `response.completed` arrived and nothing failed on the way."""

    def __init__(self) -> None:
        self.response: dict[str, Any] = {}
        self.completed = False
        self.malformed = False

    def add(self, data: str) -> dict[str, Any] | None:
        event = typed_event(data)
        if event is None:
            self.malformed = True
            return None
        kind = event["type"]
        final = event.get("response")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            if isinstance(final, dict):
                self.response = final
            self.completed = kind == "response.completed"
        elif kind == "error":
            self.malformed = True
        return event

    @property
    def complete(self) -> bool:
        return self.completed and not self.malformed

    def result(self) -> dict[str, Any]:
        return self.response


def replay(response: dict[str, Any]) -> Iterator[bytes]:
    """A stored response as the events of a live one: created and in_progress (with no
    output yet), each output item added, its text in deltas, done, then completed."""
    seq = 0

    def event(payload: dict[str, Any]) -> bytes:
        nonlocal seq
        payload["sequence_number"] = seq
        seq += 1
        return encode(payload, event=payload["type"])

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    yield event({"type": "response.created", "response": pending})
    yield event({"type": "response.in_progress", "response": pending})
    for index, item in enumerate(response.get("output") or []):
        if not isinstance(item, dict):
            continue
        yield from _replay_item(event, index, item)
    yield event({"type": "response.completed", "response": response})


def _replay_item(event: Any, index: int, item: dict[str, Any]) -> Iterator[bytes]:
    item_id = item.get("id", "")
    if item.get("type") != "message":
        # A function call or reasoning item arrives whole, as the SDK accumulates it.
        yield event({"type": "response.output_item.added", "output_index": index, "item": item})
        yield event({"type": "response.output_item.done", "output_index": index, "item": item})
        return
    opening = {**item, "status": "in_progress", "content": []}
    yield event({"type": "response.output_item.added", "output_index": index, "item": opening})
    for c, part in enumerate(item.get("content") or []):
        where = {"item_id": item_id, "output_index": index, "content_index": c}
        if not isinstance(part, dict) or part.get("type") != "output_text":
            yield event({"type": "response.content_part.added", **where, "part": part})
            yield event({"type": "response.content_part.done", **where, "part": part})
            continue
        empty = {**part, "text": "", "annotations": []}
        yield event({"type": "response.content_part.added", **where, "part": empty})
        text = str(part.get("text") or "")
        for piece in pieces(text):
            yield event(
                {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
            )
        yield event({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
        yield event({"type": "response.content_part.done", **where, "part": part})
    yield event({"type": "response.output_item.done", "output_index": index, "item": item})
