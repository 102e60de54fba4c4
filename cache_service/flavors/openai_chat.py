"""OpenAI's Chat Completions API (`POST /v1/chat/completions`): the canonical view of its
requests, its usage and storability rules, stream assembly and replay, and its error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from cache_service.api.schemas import ChatRequest
from cache_service.cache.keys import ANSWER_PARAMS
from cache_service.flavors.base import (
    CanonicalRequest,
    answer_params,
    openai_usage,
    positive_int,
)
from cache_service.pricing import Usage
from cache_service.protocols import AuthScheme
from cache_service.sse import DONE, encode, pieces

UNSTORABLE_FINISH = frozenset({"length", "content_filter"})


class OpenAIChat:
    name = "openai"
    route = "/v1/chat/completions"
    upstream_path = "chat/completions"
    auth: AuthScheme = "bearer"
    schema: type[BaseModel] = ChatRequest

    def canonical(self, body: dict[str, Any]) -> CanonicalRequest:
        options = body.get("stream_options")
        cap = positive_int(body.get("max_completion_tokens")) or positive_int(
            body.get("max_tokens")
        )
        n = body.get("n")
        return CanonicalRequest(
            model=str(body["model"]),
            system=None,
            messages=body["messages"],
            params=answer_params(body, ANSWER_PARAMS),
            completion_cap=cap,
            stream=body.get("stream") is True,
            choices=n if isinstance(n, int) else 1,
            stream_usage=isinstance(options, dict) and options.get("include_usage") is True,
        )

    def usage(self, body: Any) -> Usage:
        return openai_usage(body, "prompt_tokens", "completion_tokens", "prompt_tokens_details")

    def valid(self, body: Any) -> bool:
        return isinstance(body, dict) and isinstance(body.get("choices"), list)

    def refusal(self, status: int, body: Any, *, cache_tool_calls: bool) -> str | None:
        return store_refusal(status, body, cache_tool_calls=cache_tool_calls)

    def stream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        # Usage is asked for on the caller's behalf (to store and account the answer);
        # followers that did not ask for it skip that chunk.
        options = body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        return {**body, "stream_options": {**options, "include_usage": True}}

    def assembler(self) -> ChatStreamAssembler:
        return ChatStreamAssembler()

    def usage_only(self, event: dict[str, Any] | None) -> bool:
        return event is not None and not event.get("choices") and bool(event.get("usage"))

    def replay(self, body: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
        return replay(body, include_usage=include_usage)

    def error_body(
        self, message: str, type_: str, *, param: str | None = None, code: str | None = None
    ) -> dict[str, Any]:
        return error_body(message, type_, param=param, code=code)

    def error_event(
        self, message: str, type_: str, *, param: str | None = None, code: str | None = None
    ) -> bytes:
        return encode(error_body(message, type_, param=param, code=code))

    def answer_text(self, body: dict[str, Any]) -> str:
        try:
            return str(body["choices"][0]["message"].get("content") or "")
        except (KeyError, IndexError, TypeError, AttributeError):
            return ""


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape, which its SDK maps to exception classes by status. The
    sidecar's own endpoints answer in it too."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def store_refusal(status: int, response: Any, *, cache_tool_calls: bool) -> str | None:
    """Why an upstream answer must not be stored, or None when it may be."""
    if not 200 <= status < 300:
        return f"status {status}"
    if not isinstance(response, dict):
        return "body is not a JSON object"
    if "error" in response:
        return "error body"
    choices = response.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return "not exactly one choice"
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        return "choice without a message"
    finish = choice.get("finish_reason")
    if finish in UNSTORABLE_FINISH:
        return f"finish_reason {finish}"
    if finish is None:
        return "no finish_reason"
    message = choice["message"]
    if (message.get("tool_calls") or message.get("function_call")) and not cache_tool_calls:
        return "tool calls"
    if not message.get("content") and not message.get("tool_calls"):
        return "empty answer"
    return None


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

    def result(self) -> dict[str, Any]:
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
    for piece in pieces(message.get("content") or ""):
        yield chunk({"content": piece})
    for i, call in enumerate(message.get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": i, **call}]})
    yield chunk({}, choice.get("finish_reason") or "stop")
    if include_usage and completion.get("usage"):
        yield encode({**base, "choices": [], "usage": completion["usage"]})
    yield encode(DONE)
