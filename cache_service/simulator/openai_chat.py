"""`POST /v1/chat/completions`: validation, the completion body and its stream of chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from cache_service.simulator.answers import (
    answer_text,
    count_tokens,
    digest_of,
    fake_arguments,
    fingerprint,
    last_user_text,
    prompt_tokens,
    truncate,
)
from cache_service.simulator.errors import BadRequest, bad_request, is_int
from cache_service.simulator.state import admit
from cache_service.simulator.stream import (
    DROP_AFTER_CONTENT_CHUNKS,
    argument_pieces,
    event_stream,
    sse,
    word_pieces,
)

_MAX_N = 128


@dataclass(frozen=True, slots=True)
class _ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    n: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    tools: list[dict[str, Any]]
    # "required", a forced function name, or None for a plain text answer.
    tool_mode: str | None


@dataclass(frozen=True, slots=True)
class _Choice:
    content: str | None
    tool_call: dict[str, Any] | None
    finish_reason: str
    completion_tokens: int


# ---------------------------------------------------------------------------------------------
# Request validation


def validate_messages(messages: Any, roles: frozenset[str] | None) -> list[dict[str, Any]]:
    """A chat-style message list (Anthropic's too, with `roles` limited)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of message objects.", "messages")
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{param} must be an object.", param)
        role = message.get("role")
        if not isinstance(role, str) or (roles is not None and role not in roles):
            raise BadRequest(f"{param}.role is missing or invalid.", f"{param}.role")
        # An assistant turn that only called tools legitimately has no content.
        if "content" not in message and not message.get("tool_calls"):
            raise BadRequest(f"{param}.content is required.", f"{param}.content")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(
                f"{param}.content must be a string or an array of parts.", f"{param}.content"
            )
    return messages


def _validate_tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array.", "tools")
    names: list[str] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise BadRequest(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}.",
                f"tools[{i}]",
            )
        names.append(function["name"])
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none"):
        return tools, None
    if choice == "required":
        if not tools:
            raise BadRequest("tool_choice 'required' needs at least one tool.", "tool_choice")
        return tools, "required"
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or name not in names:
            raise BadRequest(
                f"tool_choice names a function that is not in 'tools': {name!r}.", "tool_choice"
            )
        return tools, name
    raise BadRequest("Invalid value for 'tool_choice'.", "tool_choice")


def _validate_chat(body: dict[str, Any]) -> _ChatRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string.", "model")
    messages = validate_messages(body.get("messages"), None)
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not is_int(n) or not 1 <= n <= _MAX_N:
        raise BadRequest(f"'n' must be an integer between 1 and {_MAX_N}.", "n")
    max_tokens: int | None = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not is_int(value) or value < 1:
            raise BadRequest(f"'{key}' must be a positive integer.", key)
        # max_completion_tokens is the newer name; when both are given it wins, as upstream.
        max_tokens = value
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise BadRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        if not isinstance(options, dict):
            raise BadRequest("'stream_options' must be an object.", "stream_options")
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    tools, tool_mode = _validate_tools(body)
    return _ChatRequest(model, messages, n, max_tokens, stream, include_usage, tools, tool_mode)


# ---------------------------------------------------------------------------------------------
# The answer


def _tool_call(req: _ChatRequest, digest: str) -> dict[str, Any]:
    if req.tool_mode == "required":
        tool = req.tools[int(digest[:8], 16) % len(req.tools)]
    else:
        tool = next(t for t in req.tools if t["function"]["name"] == req.tool_mode)
    function = tool["function"]
    name: str = function["name"]
    return {
        "id": f"call_{digest[8:32]}",
        "type": "function",
        "function": {
            "name": name,
            "arguments": fake_arguments(function.get("parameters"), digest, name),
        },
    }


def _build_choice(req: _ChatRequest, seed: str, index: int) -> _Choice:
    digest = digest_of(req.model, req.messages, seed, index)
    if req.tool_mode is not None:
        call = _tool_call(req, digest)
        used = count_tokens(call["function"]["name"]) + count_tokens(call["function"]["arguments"])
        return _Choice(None, call, "tool_calls", used)
    text = answer_text(digest, last_user_text(req.messages))
    truncated = False
    if req.max_tokens is not None:
        text, truncated = truncate(text, req.max_tokens)
    return _Choice(text, None, "length" if truncated else "stop", count_tokens(text))


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _completion_body(
    req: _ChatRequest,
    choices: Sequence[_Choice],
    usage: dict[str, Any],
    completion_id: str,
    created: int,
    system_fingerprint: str,
) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for index, choice in enumerate(choices):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": choice.content,
            "refusal": None,
            "annotations": [],
        }
        if choice.tool_call is not None:
            message["tool_calls"] = [choice.tool_call]
        out.append(
            {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": out,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": system_fingerprint,
    }


def _stream_events(
    req: _ChatRequest,
    choices: Sequence[_Choice],
    usage: dict[str, Any],
    drop: bool,
    head: dict[str, Any],
) -> Iterator[bytes]:
    def chunk(choice_index: int, delta: dict[str, Any], finish: str | None) -> bytes:
        payload = {
            **head,
            "choices": [
                {"index": choice_index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if req.include_usage:
            payload["usage"] = None
        return sse(payload)

    for index, choice in enumerate(choices):
        if choice.tool_call is not None:
            call = choice.tool_call
            arguments: str = call["function"]["arguments"]
            opening = {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            yield chunk(
                index, {"role": "assistant", "content": None, "tool_calls": [opening]}, None
            )
            for n, piece in enumerate(argument_pieces(arguments)):
                if drop and n >= DROP_AFTER_CONTENT_CHUNKS:
                    return
                yield chunk(
                    index, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None
                )
        else:
            yield chunk(index, {"role": "assistant", "content": "", "refusal": None}, None)
            for n, piece in enumerate(word_pieces(choice.content or "")):
                if drop and n >= DROP_AFTER_CONTENT_CHUNKS:
                    return
                yield chunk(index, {"content": piece}, None)
        if drop:
            # Too short to drop mid-content: still end without finish_reason or [DONE].
            return
        yield chunk(index, {}, choice.finish_reason)
    if req.include_usage:
        yield sse({**head, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------
# The handler


async def chat_completions(request: Request) -> Response:
    admitted = await admit(request, "openai")
    if isinstance(admitted, Response):
        return admitted
    try:
        req = _validate_chat(admitted.json_object())
    except BadRequest as exc:
        return bad_request("openai", exc)

    config = await admitted.sim.pause()
    choices = [_build_choice(req, config.seed, i) for i in range(req.n)]
    usage = _usage(
        prompt_tokens(req.messages, req.tools), sum(c.completion_tokens for c in choices)
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    system_fingerprint = fingerprint(config.seed)
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    if not req.stream:
        body_out = _completion_body(req, choices, usage, completion_id, created, system_fingerprint)
        return admitted.deliver(JSONResponse(body_out, headers=headers))

    admitted.sim.streams += 1
    head = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": req.model,
        "service_tier": "default",
        "system_fingerprint": system_fingerprint,
    }
    events = _stream_events(req, choices, usage, admitted.drop, head)
    return admitted.deliver(event_stream(events, config, headers))
