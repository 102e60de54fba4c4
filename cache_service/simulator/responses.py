"""`POST /v1/responses`, OpenAI's Responses API: the response object and its stream of events.

One output item per response: a `message` with one `output_text` part (truncated at
`max_output_tokens`, which makes the response and the message `incomplete`), or, when
`tool_choice` is `required` or names a function, a `function_call` with fake arguments for the
function's schema. `text.format` `json_schema` answers a fake JSON value for the schema,
`json_object` wraps the plain answer in `{"answer": ...}`.

A stream is named events whose data carries `type` and a `sequence_number` from 0, in the API's
order, ending with `response.completed` (or `response.incomplete`) and no `[DONE]`. A `drop`
fault ends it after a few deltas, before any `*.done` event.
"""

from __future__ import annotations

import itertools
import json
import secrets
import string
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from cache_service.simulator.answers import (
    answer_text,
    count_tokens,
    digest_of,
    fake_arguments,
    fake_value,
    hash_ints,
    last_user_text,
    prompt_tokens,
    truncate,
)
from cache_service.simulator.errors import BadRequest, bad_request
from cache_service.simulator.responses_request import ResponsesRequest, validate_responses
from cache_service.simulator.state import admit
from cache_service.simulator.stream import (
    DROP_AFTER_CONTENT_CHUNKS,
    argument_pieces,
    event_stream,
    named_event,
    word_pieces,
)

_OBFUSCATION_ALPHABET = string.ascii_letters + string.digits
_OBFUSCATION_BLOCK = 16


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


# ---------------------------------------------------------------------------------------------
# The answer


def _answer(req: ResponsesRequest, digest: str) -> str:
    fmt = req.text["format"]
    if fmt["type"] == "json_schema":
        return json.dumps(fake_value(fmt["schema"], hash_ints(digest)))
    text = answer_text(digest, last_user_text(req.messages))
    return json.dumps({"answer": text}) if fmt["type"] == "json_object" else text


def _output_item(req: ResponsesRequest, digest: str) -> tuple[dict[str, Any], int, bool]:
    """The one output item, the tokens it counts, and whether max_output_tokens cut it."""
    if req.tool_mode is not None:
        functions = req.function_tools
        if req.tool_mode == "required":
            tool = functions[int(digest[:8], 16) % len(functions)]
        else:
            tool = next(t for t in functions if t["name"] == req.tool_mode)
        name: str = tool["name"]
        arguments = fake_arguments(tool["parameters"], digest, name)
        call = {
            "id": _new_id("fc"),
            "type": "function_call",
            "status": "completed",
            "arguments": arguments,
            "call_id": f"call_{digest[8:32]}",
            "name": name,
        }
        return call, count_tokens(name) + count_tokens(arguments), False
    text = _answer(req, digest)
    truncated = False
    if req.max_output_tokens is not None:
        text, truncated = truncate(text, req.max_output_tokens)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    message = {
        "id": _new_id("msg"),
        "type": "message",
        "status": "incomplete" if truncated else "completed",
        "content": [part],
        "role": "assistant",
    }
    return message, count_tokens(text), truncated


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _response_object(
    req: ResponsesRequest,
    response_id: str,
    created_at: int,
    *,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    status: str,
) -> dict[str, Any]:
    done = status != "in_progress"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": None,
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "prompt_cache_key": req.prompt_cache_key,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": req.safety_identifier,
        # Upstream says "auto" until the response is served, then the tier that served it.
        "service_tier": "default" if done else "auto",
        "store": req.store,
        "temperature": req.temperature,
        "text": req.text,
        "tool_choice": req.tool_choice,
        "tools": req.tools,
        "top_logprobs": 0,
        "top_p": req.top_p,
        "truncation": req.truncation,
        "usage": usage,
        "user": req.user,
        "metadata": req.metadata,
    }


# ---------------------------------------------------------------------------------------------
# The stream


def _obfuscation(delta: str) -> str:
    """Random padding that rounds a delta's size up, as upstream adds by default."""
    size = 1 + (-len(delta)) % _OBFUSCATION_BLOCK
    return "".join(secrets.choice(_OBFUSCATION_ALPHABET) for _ in range(size))


def _stream_events(
    pending: Mapping[str, Any], final: Mapping[str, Any], drop: bool, obfuscate: bool
) -> Iterator[bytes]:
    sequence = itertools.count()

    def event(kind: str, **data: Any) -> bytes:
        return named_event({"type": kind, "sequence_number": next(sequence), **data})

    def delta(kind: str, piece: str, **where: Any) -> bytes:
        extra = {"obfuscation": _obfuscation(piece)} if obfuscate else {}
        return event(kind, **where, delta=piece, **extra)

    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    for output_index, item in enumerate(final["output"]):
        at: dict[str, Any] = {"item_id": item["id"], "output_index": output_index}
        if item["type"] == "function_call":
            opening = {**item, "status": "in_progress", "arguments": ""}
            yield event("response.output_item.added", output_index=output_index, item=opening)
            for n, piece in enumerate(argument_pieces(item["arguments"])):
                if drop and n >= DROP_AFTER_CONTENT_CHUNKS:
                    return
                yield delta("response.function_call_arguments.delta", piece, **at)
            if drop:
                return
            yield event("response.function_call_arguments.done", **at, arguments=item["arguments"])
        else:
            opening = {**item, "status": "in_progress", "content": []}
            yield event("response.output_item.added", output_index=output_index, item=opening)
            part = item["content"][0]
            at["content_index"] = 0
            yield event("response.content_part.added", **at, part={**part, "text": ""})
            for n, piece in enumerate(word_pieces(part["text"])):
                if drop and n >= DROP_AFTER_CONTENT_CHUNKS:
                    return
                yield delta("response.output_text.delta", piece, **at, logprobs=[])
            if drop:
                # Too short to drop mid-content: still end before any done event.
                return
            yield event("response.output_text.done", **at, text=part["text"], logprobs=[])
            yield event("response.content_part.done", **at, part=part)
        yield event("response.output_item.done", output_index=output_index, item=item)
    yield event(f"response.{final['status']}", response=final)


# ---------------------------------------------------------------------------------------------
# The handler


async def create_response(request: Request) -> Response:
    admitted = await admit(request, "openai")
    if isinstance(admitted, Response):
        return admitted
    try:
        req = validate_responses(admitted.json_object())
    except BadRequest as exc:
        return bad_request("openai", exc)

    config = await admitted.sim.pause()
    item, output_tokens, truncated = _output_item(
        req, digest_of(req.model, req.messages, config.seed)
    )
    usage = _usage(prompt_tokens(req.messages, req.tools), output_tokens)
    response_id = _new_id("resp")
    created_at = int(time.time())
    status = "incomplete" if truncated else "completed"
    final = _response_object(
        req, response_id, created_at, output=[item], usage=usage, status=status
    )
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    if not req.stream:
        return admitted.deliver(JSONResponse(final, headers=headers))

    admitted.sim.streams += 1
    pending = _response_object(
        req, response_id, created_at, output=[], usage=None, status="in_progress"
    )
    events = _stream_events(pending, final, admitted.drop, req.obfuscate)
    return admitted.deliver(event_stream(events, config, headers))
