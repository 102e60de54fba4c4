"""A deterministic, OpenAI-compatible fake LLM server for tests, demos and benchmarks.

Answers are a pure function of (model, messages, seed), so a cache in front of it can be checked
for correctness (a hit must equal what the upstream would have said) and the upstream's own
request counter tells exactly how many calls the cache let through.

Fault injection lives on the simulator itself, because the sidecar in front of it forwards only
the standard headers:

* ``POST /_sim/faults`` ``{"faults": ["429", "500", "slow", ...], "retry_after": 2,
  "slow_s": 0.2, "timeout_s": 1}`` appends to a FIFO queue; every completion request
  (``/v1/chat/completions`` and ``/v1/messages``) pops one.
* ``X-Sim-Fault: <fault>`` on a single request does the same for direct tests; it wins over
  the queue and leaves the queue untouched.

A fault is ``ok`` (no fault, to leave a gap in the queue), ``401``, ``429``, ``500``, ``503``,
``slow``, ``timeout`` or ``drop``; ``429``, ``slow`` and ``timeout`` take an optional
``:<seconds>`` suffix (``"slow:0.2"``) that overrides the request-wide value. ``drop`` ends a
streamed answer after a few chunks with no ``finish_reason`` and no ``[DONE]`` (on
``/v1/messages``: no ``message_delta`` and no ``message_stop``); on a non-streamed request it
is a 500, because an ASGI app cannot portably cut a body short.

``GET /_sim/stats``, ``POST /_sim/reset`` (counters, queue and runtime config back to how the
app was created) and ``POST /_sim/config`` (change latency and friends at runtime) complete the
control API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


@dataclass
class SimConfig:
    latency_ms: float = 0
    """Base latency before answering (before the first byte of a stream)."""
    stream_chunk_delay_ms: float = 0
    retry_after_s: float = 1
    """Retry-After for a 429 fault that does not name its own."""
    seed: str = ""
    """Mixed into every answer's hash, so two simulators can disagree on purpose."""


_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_MESSAGE_OVERHEAD_TOKENS = 4
_MIN_ANSWER_TOKENS = 20
_MAX_ANSWER_TOKENS = 120
_WORDS_PER_STREAM_CHUNK = 3
_ARGUMENT_CHARS_PER_STREAM_CHUNK = 12
_DROP_AFTER_CONTENT_CHUNKS = 2
_DEFAULT_SLOW_S = 5.0
_DEFAULT_TIMEOUT_S = 60.0
_MAX_N = 128
_CREATED_MODELS = 1_700_000_000

_MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("gpt-4.1", "openai"),
    ("gpt-4.1-mini", "openai"),
    ("gpt-4.1-nano", "openai"),
    ("text-embedding-3-small", "openai"),
    ("claude-3-5-haiku-latest", "anthropic"),
    ("claude-3-5-sonnet-latest", "anthropic"),
)

# Only \w characters, so each one is exactly one token and lengths stay predictable.
_VOCABULARY: tuple[str, ...] = (
    "the", "cache", "answer", "model", "request", "response", "latency", "token", "prompt",
    "context", "result", "value", "system", "data", "query", "simple", "detailed", "quick",
    "useful", "example", "first", "second", "next", "finally", "because", "therefore", "which",
    "should", "could", "would", "might", "often", "usually", "always", "never", "here", "there",
    "this", "that", "these", "with", "without", "about", "across", "between", "under", "over",
    "within", "process", "method", "approach", "option", "feature", "service", "client",
    "server", "network", "memory", "storage", "policy", "budget", "quality", "accuracy",
    "consider", "improve", "reduce", "measure", "return", "explain", "describe", "compare",
)  # fmt: skip

_FAULT_KINDS = frozenset({"ok", "401", "429", "500", "503", "slow", "timeout", "drop"})
_TIMED_FAULTS = frozenset({"429", "slow", "timeout"})
_CONFIG_NUMBERS = frozenset({"latency_ms", "stream_chunk_delay_ms", "retry_after_s"})

_Api = Literal["openai", "anthropic"]


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class _Fault:
    kind: str
    seconds: float | None = None
    """Retry-After for 429, the sleep for slow/timeout; None means the configured default."""


@dataclass
class _SimState:
    initial: SimConfig
    config: SimConfig
    faults: deque[_Fault] = field(default_factory=deque)
    requests: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    faults_served: int = 0
    streams: int = 0
    last_authorization: str | None = None
    last_request: Any = None

    def reset(self) -> None:
        self.config = replace(self.initial)
        self.faults.clear()
        self.requests = 0
        self.by_path = {}
        self.faults_served = 0
        self.streams = 0
        self.last_authorization = None
        self.last_request = None

    def record(self, request: Request, *, completion: bool) -> None:
        path = request.url.path
        self.by_path[path] = self.by_path.get(path, 0) + 1
        self.last_authorization = request.headers.get("authorization")
        if completion:
            self.requests += 1

    def take_fault(self, request: Request) -> _Fault | None:
        header = request.headers.get("x-sim-fault")
        if header is not None:
            fault: _Fault | None = _parse_fault(header, {})
        else:
            fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.kind != "ok":
            self.faults_served += 1
        return fault

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "faults_served": self.faults_served,
            "queued_faults": len(self.faults),
            "streams": self.streams,
            "last_authorization": self.last_authorization,
            "last_request": self.last_request,
            "config": asdict(self.config),
        }


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
# The deterministic answer


def count_tokens(text: str) -> int:
    """A tokenizer-free stand-in: words and punctuation marks, close enough to BPE counts."""
    return len(_TOKEN_RE.findall(text))


def _digest(model: str, messages: Sequence[Any], seed: str, index: int = 0) -> str:
    payload = json.dumps(
        [model, messages, seed], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    # Choice 0 keeps the plain digest so an n=1 answer equals the first of an n>1 answer.
    if index:
        payload += f"#{index}"
    return hashlib.sha256(payload.encode()).hexdigest()


def _hash_ints(digest: str) -> Iterator[int]:
    """An endless stream of ints from chained hashes; unlike `random`, stable by construction."""
    counter = 0
    while True:
        block = hashlib.sha256(f"{digest}:{counter}".encode()).digest()
        for offset in range(0, len(block), 4):
            yield int.from_bytes(block[offset : offset + 4], "big")
        counter += 1


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return ""


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _answer_text(digest: str, last_user: str) -> str:
    snippet = " ".join(last_user.split())[:60].rstrip()
    prefix = f'Simulated answer {digest[:8]} to: "{snippet}".'
    ints = _hash_ints(digest)
    target = _MIN_ANSWER_TOKENS + next(ints) % (_MAX_ANSWER_TOKENS - _MIN_ANSWER_TOKENS + 1)
    tokens = count_tokens(prefix)
    sentences = [prefix]
    while tokens < target:
        # Each word is one token and the full stop another; the cap keeps the total near target.
        length = max(1, min(4 + next(ints) % 9, target - tokens - 1))
        words = [_VOCABULARY[next(ints) % len(_VOCABULARY)] for _ in range(length)]
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + ".")
        tokens += length + 1
    return " ".join(sentences)


def _truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    matches = list(_TOKEN_RE.finditer(text))
    if len(matches) <= max_tokens:
        return text, False
    # Cut at the end of the last kept token so the original spacing survives.
    return text[: matches[max_tokens - 1].end()], True


def _fake_value(schema: Any, ints: Iterator[int], depth: int = 0) -> Any:
    if not isinstance(schema, dict):
        return f"sim_{next(ints) % 0xFFFFFF:06x}"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[next(ints) % len(enum)]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return next(ints) % 100
    if kind == "number":
        return (next(ints) % 10_000) / 100
    if kind == "boolean":
        return next(ints) % 2 == 0
    if kind == "array":
        return [] if depth >= 3 else [_fake_value(schema.get("items"), ints, depth + 1)]
    if kind == "object" or "properties" in schema:
        return {} if depth >= 3 else _fake_object(schema, ints, depth + 1)
    return f"sim_{next(ints) % 0xFFFFFF:06x}"


def _fake_object(schema: Mapping[str, Any], ints: Iterator[int], depth: int = 0) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {name: _fake_value(sub, ints, depth) for name, sub in sorted(properties.items())}


def _tool_call(req: _ChatRequest, digest: str) -> dict[str, Any]:
    if req.tool_mode == "required":
        tool = req.tools[int(digest[:8], 16) % len(req.tools)]
    else:
        tool = next(t for t in req.tools if t["function"]["name"] == req.tool_mode)
    function = tool["function"]
    name: str = function["name"]
    arguments = _fake_object(function.get("parameters") or {}, _hash_ints(f"{digest}:{name}"))
    return {
        "id": f"call_{digest[8:32]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, separators=(",", ":"))},
    }


def _build_choice(req: _ChatRequest, seed: str, index: int) -> _Choice:
    digest = _digest(req.model, req.messages, seed, index)
    if req.tool_mode is not None:
        call = _tool_call(req, digest)
        used = count_tokens(call["function"]["name"]) + count_tokens(call["function"]["arguments"])
        return _Choice(None, call, "tool_calls", used)
    text = _answer_text(digest, _last_user_text(req.messages))
    truncated = False
    if req.max_tokens is not None:
        text, truncated = _truncate(text, req.max_tokens)
    return _Choice(text, None, "length" if truncated else "stop", count_tokens(text))


def _prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any]) -> int:
    total = 0
    for message in messages:
        total += _MESSAGE_OVERHEAD_TOKENS + count_tokens(_text_of(message.get("content")))
        if message.get("tool_calls"):
            total += count_tokens(json.dumps(message["tool_calls"]))
    if tools:
        total += count_tokens(json.dumps(tools))
    return total


def _fingerprint(seed: str) -> str:
    return "fp_" + hashlib.sha256(f"sim:{seed}".encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------
# Request validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _validate_messages(messages: Any, roles: frozenset[str] | None) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array of message objects.", "messages")
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _BadRequest(f"{param} must be an object.", param)
        role = message.get("role")
        if not isinstance(role, str) or (roles is not None and role not in roles):
            raise _BadRequest(f"{param}.role is missing or invalid.", f"{param}.role")
        # An assistant turn that only called tools legitimately has no content.
        if "content" not in message and not message.get("tool_calls"):
            raise _BadRequest(f"{param}.content is required.", f"{param}.content")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _BadRequest(
                f"{param}.content must be a string or an array of parts.", f"{param}.content"
            )
    return messages


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"We could not parse the JSON body of your request: {exc}") from exc


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return body


def _validate_tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise _BadRequest("'tools' must be an array.", "tools")
    names: list[str] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise _BadRequest(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}.",
                f"tools[{i}]",
            )
        names.append(function["name"])
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none"):
        return tools, None
    if choice == "required":
        if not tools:
            raise _BadRequest("tool_choice 'required' needs at least one tool.", "tool_choice")
        return tools, "required"
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or name not in names:
            raise _BadRequest(
                f"tool_choice names a function that is not in 'tools': {name!r}.", "tool_choice"
            )
        return tools, name
    raise _BadRequest("Invalid value for 'tool_choice'.", "tool_choice")


def _validate_chat(body: dict[str, Any]) -> _ChatRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' is required and must be a string.", "model")
    messages = _validate_messages(body.get("messages"), None)
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not _is_int(n) or not 1 <= n <= _MAX_N:
        raise _BadRequest(f"'n' must be an integer between 1 and {_MAX_N}.", "n")
    max_tokens: int | None = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise _BadRequest(f"'{key}' must be a positive integer.", key)
        # max_completion_tokens is the newer name; when both are given it wins, as upstream.
        max_tokens = value
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _BadRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        if not isinstance(options, dict):
            raise _BadRequest("'stream_options' must be an object.", "stream_options")
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    tools, tool_mode = _validate_tools(body)
    return _ChatRequest(model, messages, n, max_tokens, stream, include_usage, tools, tool_mode)


# ---------------------------------------------------------------------------------------------
# Faults


def _parse_fault(spec: Any, defaults: Mapping[str, float]) -> _Fault:
    if isinstance(spec, bool) or not isinstance(spec, str | int):
        raise _BadRequest(f"A fault must be a string, got {spec!r}.", "faults")
    kind, sep, arg = str(spec).strip().lower().partition(":")
    if kind not in _FAULT_KINDS:
        raise _BadRequest(
            f"Unknown fault {spec!r}; expected one of {sorted(_FAULT_KINDS)}.", "faults"
        )
    if not sep:
        return _Fault(kind, defaults.get(kind))
    if kind not in _TIMED_FAULTS:
        raise _BadRequest(f"Fault {kind!r} takes no ':<seconds>' argument.", "faults")
    try:
        seconds = float(arg)
    except ValueError:
        seconds = -1.0
    if not _is_seconds(seconds):
        raise _BadRequest(f"Bad seconds in fault {spec!r}.", "faults")
    return _Fault(kind, seconds)


def _error_response(
    api: _Api,
    status: int,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    if api == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _bad_request(api: _Api, exc: _BadRequest) -> JSONResponse:
    return _error_response(api, 400, exc.message, "invalid_request_error", param=exc.param)


async def _apply_fault(
    fault: _Fault | None, api: _Api, stream: bool, config: SimConfig
) -> Response | None:
    """Return the error that replaces the answer, or None to answer (perhaps after a sleep)."""
    if fault is None or fault.kind == "ok" or (fault.kind == "drop" and stream):
        return None
    if fault.kind == "429":
        seconds = fault.seconds if fault.seconds is not None else config.retry_after_s
        # Retry-After only allows whole seconds; the ms header (which the openai SDK prefers)
        # carries the exact value.
        headers = {
            "retry-after": str(math.ceil(seconds)),
            "retry-after-ms": str(int(seconds * 1000)),
        }
        return _error_response(
            api,
            429,
            "Rate limit reached (simulated). Please try again later.",
            "rate_limit_error",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if fault.kind == "401":
        return _error_response(
            api,
            401,
            "Incorrect API key provided (simulated).",
            "authentication_error" if api == "anthropic" else "invalid_request_error",
            code="invalid_api_key",
        )
    if fault.kind in ("500", "503", "drop"):
        status = 503 if fault.kind == "503" else 500
        kind = "api_error" if api == "anthropic" else "server_error"
        if api == "anthropic" and status == 503:
            kind = "overloaded_error"
        return _error_response(
            api,
            status,
            f"The server had an error while processing your request (simulated {fault.kind}).",
            kind,
        )
    if fault.kind == "slow":
        await asyncio.sleep(fault.seconds if fault.seconds is not None else _DEFAULT_SLOW_S)
    elif fault.kind == "timeout":
        await asyncio.sleep(fault.seconds if fault.seconds is not None else _DEFAULT_TIMEOUT_S)
    return None


# ---------------------------------------------------------------------------------------------
# Response shapes


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
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
    fingerprint: str,
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
        "system_fingerprint": fingerprint,
    }


def _sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _word_pieces(text: str) -> list[str]:
    # Leading whitespace stays attached to its word, so the pieces concatenate back exactly.
    words = re.findall(r"\s*\S+\s*$|\s*\S+", text)
    step = _WORDS_PER_STREAM_CHUNK
    return ["".join(words[i : i + step]) for i in range(0, len(words), step)]


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
        return _sse(payload)

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
            step = _ARGUMENT_CHARS_PER_STREAM_CHUNK
            pieces = [arguments[i : i + step] for i in range(0, len(arguments), step)]
            for n, piece in enumerate(pieces):
                if drop and n >= _DROP_AFTER_CONTENT_CHUNKS:
                    return
                yield chunk(
                    index, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None
                )
        else:
            yield chunk(index, {"role": "assistant", "content": "", "refusal": None}, None)
            for n, piece in enumerate(_word_pieces(choice.content or "")):
                if drop and n >= _DROP_AFTER_CONTENT_CHUNKS:
                    return
                yield chunk(index, {"content": piece}, None)
        if drop:
            # Too short to drop mid-content: still end without finish_reason or [DONE].
            return
        yield chunk(index, {}, choice.finish_reason)
    if req.include_usage:
        yield _sse({**head, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _anthropic_stream_events(message: dict[str, Any], drop: bool) -> Iterator[bytes]:
    """The Messages API stream for a one-text-block message, in Anthropic's documented order.
    Written out here rather than shared with the cache's replay, so the simulator stays an
    independent check on it."""

    def event(payload: dict[str, Any]) -> bytes:
        return f"event: {payload['type']}\n".encode() + _sse(payload)

    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        # Upstream reports the input up front and a token-so-far output count.
        "usage": {**message["usage"], "output_tokens": 1},
    }
    yield event({"type": "message_start", "message": start})
    yield event(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    )
    yield event({"type": "ping"})
    for n, piece in enumerate(_word_pieces(message["content"][0]["text"])):
        if drop and n >= _DROP_AFTER_CONTENT_CHUNKS:
            return
        delta = {"type": "text_delta", "text": piece}
        yield event({"type": "content_block_delta", "index": 0, "delta": delta})
    if drop:
        # Too short to drop mid-content: still end without message_delta or message_stop.
        return
    yield event({"type": "content_block_stop", "index": 0})
    yield event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        }
    )
    yield event({"type": "message_stop"})


async def _paced(events: Iterator[bytes], delay_s: float) -> AsyncIterator[bytes]:
    first = True
    for event in events:
        if not first and delay_s > 0:
            await asyncio.sleep(delay_s)
        first = False
        yield event


# ---------------------------------------------------------------------------------------------
# Handlers


def _sim(request: Request) -> _SimState:
    state = request.app.state.sim
    if not isinstance(state, _SimState):  # pragma: no cover - only if someone replaced it
        raise TypeError("app.state.sim is not a simulator state")
    return state


async def _read_json(request: Request) -> tuple[Any, _BadRequest | None]:
    try:
        return _parse_json(await request.body()), None
    except _BadRequest as exc:
        return None, exc


async def _chat_completions(request: Request) -> Response:
    sim = _sim(request)
    sim.record(request, completion=True)
    body, parse_error = await _read_json(request)
    sim.last_request = body
    try:
        fault = sim.take_fault(request)
    except _BadRequest as exc:
        return _bad_request("openai", exc)
    wants_stream = isinstance(body, dict) and body.get("stream") is True
    faulted = await _apply_fault(fault, "openai", wants_stream, sim.config)
    if faulted is not None:
        return faulted
    if parse_error is not None:
        return _bad_request("openai", parse_error)
    try:
        req = _validate_chat(_require_object(body))
    except _BadRequest as exc:
        return _bad_request("openai", exc)

    config = sim.config
    if config.latency_ms > 0:
        await asyncio.sleep(config.latency_ms / 1000)
    choices = [_build_choice(req, config.seed, i) for i in range(req.n)]
    usage = _usage(
        _prompt_tokens(req.messages, req.tools), sum(c.completion_tokens for c in choices)
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    fingerprint = _fingerprint(config.seed)
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    if not req.stream:
        body_out = _completion_body(req, choices, usage, completion_id, created, fingerprint)
        return JSONResponse(body_out, headers=headers)

    sim.streams += 1
    head = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": req.model,
        "service_tier": "default",
        "system_fingerprint": fingerprint,
    }
    drop = fault is not None and fault.kind == "drop"
    events = _stream_events(req, choices, usage, drop, head)
    return StreamingResponse(
        _paced(events, config.stream_chunk_delay_ms / 1000),
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache"},
    )


async def _anthropic_messages(request: Request) -> Response:
    sim = _sim(request)
    sim.record(request, completion=True)
    body, parse_error = await _read_json(request)
    sim.last_request = body
    try:
        fault = sim.take_fault(request)
    except _BadRequest as exc:
        return _bad_request("anthropic", exc)
    wants_stream = isinstance(body, dict) and body.get("stream") is True
    faulted = await _apply_fault(fault, "anthropic", wants_stream, sim.config)
    if faulted is not None:
        return faulted
    try:
        if parse_error is not None:
            raise parse_error
        data = _require_object(body)
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("model: Field required")
        max_tokens = data.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _BadRequest("max_tokens: Field required and must be a positive integer")
        messages = _validate_messages(data.get("messages"), frozenset({"user", "assistant"}))
        system = data.get("system")
        if system is not None and not isinstance(system, str | list):
            raise _BadRequest("system: must be a string or an array of text blocks")
        stream = data.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise _BadRequest("stream: Input should be a valid boolean")
    except _BadRequest as exc:
        return _bad_request("anthropic", exc)

    config = sim.config
    if config.latency_ms > 0:
        await asyncio.sleep(config.latency_ms / 1000)
    # Folding system into the message list makes this the same answer as the equivalent
    # chat completion.
    full = ([{"role": "system", "content": system}] if system else []) + messages
    text = _answer_text(_digest(model, full, config.seed), _last_user_text(messages))
    text, truncated = _truncate(text, max_tokens)
    message = {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": _prompt_tokens(full, []),
            "output_tokens": count_tokens(text),
        },
    }
    headers = {"request-id": f"req_{uuid.uuid4().hex}"}
    if not stream:
        return JSONResponse(message, headers=headers)

    sim.streams += 1
    drop = fault is not None and fault.kind == "drop"
    return StreamingResponse(
        _paced(_anthropic_stream_events(message, drop), config.stream_chunk_delay_ms / 1000),
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache"},
    )


async def _models(request: Request) -> Response:
    _sim(request).record(request, completion=False)
    data = [
        {"id": model, "object": "model", "created": _CREATED_MODELS, "owned_by": owner}
        for model, owner in _MODELS
    ]
    return JSONResponse({"object": "list", "data": data})


async def _healthz() -> Response:
    return JSONResponse({"status": "ok"})


async def _sim_faults(request: Request) -> Response:
    sim = _sim(request)
    try:
        body = _require_object(_parse_json(await request.body()))
        specs = body.get("faults")
        if not isinstance(specs, list):
            raise _BadRequest("'faults' must be an array.", "faults")
        defaults: dict[str, float] = {}
        for key, kind in (("retry_after", "429"), ("slow_s", "slow"), ("timeout_s", "timeout")):
            value = body.get(key)
            if value is None:
                continue
            if not _is_seconds(value):
                raise _BadRequest(f"'{key}' must be a non-negative number of seconds.", key)
            defaults[kind] = float(value)
        # Parse all before queueing any, so a typo leaves the queue as it was.
        parsed = [_parse_fault(spec, defaults) for spec in specs]
    except _BadRequest as exc:
        return _bad_request("openai", exc)
    sim.faults.extend(parsed)
    return JSONResponse({"queued_faults": len(sim.faults)})


async def _sim_stats(request: Request) -> Response:
    return JSONResponse(_sim(request).stats())


async def _sim_reset(request: Request) -> Response:
    sim = _sim(request)
    sim.reset()
    return JSONResponse(sim.stats())


async def _sim_config(request: Request) -> Response:
    sim = _sim(request)
    try:
        body = _require_object(_parse_json(await request.body()))
        known = {f.name for f in fields(SimConfig)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise _BadRequest(f"Unknown config keys: {unknown}; known: {sorted(known)}.")
        for key, value in body.items():
            if key in _CONFIG_NUMBERS and not _is_seconds(value):
                raise _BadRequest(f"'{key}' must be a non-negative number.", key)
            if key == "seed" and not isinstance(value, str):
                raise _BadRequest("'seed' must be a string.", key)
    except _BadRequest as exc:
        return _bad_request("openai", exc)
    sim.config = replace(sim.config, **body)
    return JSONResponse({"config": asdict(sim.config)})


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown routes and wrong methods answer in the OpenAI error shape, like the real API.
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover - registered for it
        raise exc
    message = f"{exc.detail}: {request.method} {request.url.path}"
    # Keep Starlette's headers: a 405 must still say which methods are allowed.
    return _error_response(
        "openai", exc.status_code, message, "invalid_request_error", headers=exc.headers
    )


# ---------------------------------------------------------------------------------------------
# Public entry points


def create_simulated_app(config: SimConfig | None = None) -> FastAPI:
    """Build a fresh simulator; every instance has its own counters, queue and config."""
    initial = replace(config) if config is not None else SimConfig()
    app = FastAPI(title="Simulated LLM upstream", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = _SimState(initial=initial, config=replace(initial))
    app.add_api_route("/v1/chat/completions", _chat_completions, methods=["POST"])
    app.add_api_route("/v1/messages", _anthropic_messages, methods=["POST"])
    app.add_api_route("/v1/models", _models, methods=["GET"])
    app.add_api_route("/healthz", _healthz, methods=["GET"])
    app.add_api_route("/_sim/faults", _sim_faults, methods=["POST"])
    app.add_api_route("/_sim/stats", _sim_stats, methods=["GET"])
    app.add_api_route("/_sim/reset", _sim_reset, methods=["POST"])
    app.add_api_route("/_sim/config", _sim_config, methods=["POST"])
    app.add_exception_handler(StarletteHTTPException, _http_error)
    return app


def run_simulated(host: str, port: int, config: SimConfig) -> None:
    """Serve a simulator until interrupted (blocking)."""
    uvicorn.run(create_simulated_app(config), host=host, port=port, log_level="warning")
